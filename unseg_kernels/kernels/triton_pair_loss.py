"""Fused Triton kernels for the STEGO and SmooSeg pair losses.

For one image, with raw features f1 [C, N], f2 [C, M] and raw codes c1 [D, N], c2 [D, M]
(columns are positions), and per-position inverse norms r1, r2 (features) and s1, s2
(codes), one tile of rows i and columns j computes

    fd_c[i, j] = r1[i] r2[j] (f1[:, i] . f2[:, j]) + row_off[i]     (tl.dot over C)
    cd[i, j]   = s1[i] s2[j] (c1[:, i] . c2[:, j])                  (tl.dot over D)
    l[i, j], G[i, j] = elementwise(fd_c, cd)                        (G = dl/dcd)

so normalisation is fused (the kernels read the caller's tensors, in any strides, and never
write a normalised copy) and the pointwise centering arrives as the per-row ``row_off``
(SPEC section 2's closed form). Because the loss is a scalar, the gradient w.r.t. the
normalised codes is computed in the same sweep:

    dp[:, i] = sum_j G[i, j] s2[j] c2[:, j]     (row reduction, accumulated in registers)
    dq[:, j] = sum_i G[i, j] s1[i] c1[:, i]     (column reduction across programs)

One program owns a block of rows and loops over every column block, so the loss partial,
the cd statistics and dp need no synchronisation. dq crosses programs: by default each
program adds its tile contribution with fp32 ``atomic_add`` (fast, not bit-reproducible);
with ``deterministic=True`` a second kernel, one program per column block, recomputes the
tiles and reduces dq in a fixed order. That second sweep repeats the C-long feature dot,
so deterministic mode costs about twice the FLOPs of the forward sweep.

No [N, M] buffer exists anywhere: memory is O((N + M) (C + D)) per image.

Precision: fp16/bf16 inputs feed tl.dot directly with fp32 accumulation; G is rounded to
the code dtype before the two gradient dots (as attention kernels round P). For float32
inputs every tl.dot uses ``input_precision="ieee"`` when
``torch.get_float32_matmul_precision() == "highest"`` (PyTorch's default) and ``"tf32"``
otherwise. Loss partials are summed per program in fp32 and across programs in float64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unseg_kernels import _alloc, _env

# Code dimensions up to this many channels keep their whole tile in registers.
MAX_CODE_DIM = 256


def tile_configs() -> list[triton.Config]:
    """Autotuning candidates for the tile kernels (one small tile under the interpreter, the
    first candidate alone when ``UNSEG_AUTOTUNE=0``)."""
    if _env.triton_interpreter():
        return [triton.Config({"BLOCK_N": 16, "BLOCK_M": 16, "BLOCK_C": 16}, num_warps=1)]
    # Chosen from ptxas register/spill reports on sm_80 and sm_90 (benchmarks/NOTES.md):
    # 4-warp and 64x128 tiles spill kilobytes; these spill little or nothing.
    shapes = [
        # BLOCK_N, BLOCK_M, BLOCK_C, warps, stages
        (64, 64, 64, 8, 3),
        (64, 64, 32, 8, 3),
        (64, 64, 32, 8, 2),
        (128, 32, 64, 8, 3),
        (128, 64, 32, 8, 3),
    ]
    configs = [
        triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "BLOCK_C": bc}, num_warps=w, num_stages=s)
        for bn, bm, bc, w, s in shapes
    ]
    return configs if _env.autotune() else configs[:1]


def _prune(configs, named_args, **kwargs):
    # Wide codes: a [D_PAD, 128] code tile plus a [128, D_PAD] accumulator spill registers.
    if kwargs.get("D_PAD", named_args.get("D_PAD", 0)) >= 256:
        small = [c for c in configs if c.kwargs["BLOCK_N"] <= 64 and c.kwargs["BLOCK_M"] <= 64]
        return small or configs
    return configs


_CONFIGS = tile_configs()
_INTERPRETING = tl.constexpr(_env.triton_interpreter())
_MIN_BLOCK_N = min(c.kwargs["BLOCK_N"] for c in _CONFIGS)
_TUNE_KEY = ["N", "M", "C", "D_PAD", "KIND", "NEED_DP", "ATOMIC_DQ", "STATS"]


@triton.jit
def mma(a, b, acc, PREC: tl.constexpr):
    """``tl.dot(a, b, acc)``. Triton's interpreter multiplies bf16 storage as integers, so
    there bf16 operands are widened (exactly) to fp32 first; compiled code is untouched."""
    if _INTERPRETING:
        if a.dtype == tl.bfloat16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PREC)


@triton.jit
def channel_dot(
    p_a, p_b, o_i, o_j, m_i, m_j, C, s_ac, s_an, s_bc, s_bm,
    PREC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """``sum_c a[c, i] * b[c, j]`` for a row and a column block, fp32 accumulation."""
    b_acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        o_c = c0 + tl.arange(0, BLOCK_C)
        m_c = o_c < C
        b_a = tl.load(
            p_a + o_c[:, None] * s_ac + o_i[None, :] * s_an,
            mask=m_c[:, None] & m_i[None, :],
            other=0.0,
        )  # [BC, BN]
        b_b = tl.load(
            p_b + o_c[:, None] * s_bc + o_j[None, :] * s_bm,
            mask=m_c[:, None] & m_j[None, :],
            other=0.0,
        )  # [BC, BM]
        b_acc = mma(tl.trans(b_a), b_b, b_acc, PREC)
    return b_acc  # [BN, BM]


@triton.jit
def _load_side(r, s, c, i_b, o, m, o_d, m_d, L, s_cb, s_cd, s_cl):
    """Inverse feature norms, inverse code norms ``[BLOCK]`` and the code tile
    ``[D_PAD, BLOCK]`` of the positions ``o`` of one map (L positions) of image i_b."""
    b_r = tl.load(r + i_b * L + o, mask=m, other=0.0)
    b_s = tl.load(s + i_b * L + o, mask=m, other=0.0)
    b_c = tl.load(
        c + i_b * s_cb + o_d[:, None] * s_cd + o[None, :] * s_cl,
        mask=m_d[:, None] & m[None, :],
        other=0.0,
    )
    return b_r, b_s, b_c


@triton.jit
def _pair_tile(
    p_f1, p_f2, b_c1, b_c2, b_r1, b_r2, b_s1, b_s2, b_off,
    o_i, o_j, m_i, m_j, C, lo, hi,
    s_f1c, s_f1n, s_f2c, s_f2m,
    KIND: tl.constexpr, PREC_F: tl.constexpr, PREC_C: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Loss, dl/dcd and cd of one [BLOCK_N, BLOCK_M] tile, zero outside the valid range."""
    b_fd = channel_dot(
        p_f1, p_f2, o_i, o_j, m_i, m_j, C, s_f1c, s_f1n, s_f2c, s_f2m,
        PREC_F, BLOCK_N, BLOCK_M, BLOCK_C,
    )  # fmt: skip
    b_fd = b_fd * b_r1[:, None] * b_r2[None, :] + b_off[:, None]  # [BN, BM]
    b_cd = mma(tl.trans(b_c1), b_c2, None, PREC_C)
    b_cd = b_cd * b_s1[:, None] * b_s2[None, :]  # [BN, BM]
    m_ij = m_i[:, None] & m_j[None, :]
    if KIND == 0:  # STEGO: l = -clamp(cd, lo, hi) * fd_c, torch.clamp's gradient mask
        b_l = -tl.minimum(tl.maximum(b_cd, lo), hi) * b_fd
        b_g = tl.where(m_ij & (b_cd >= lo) & (b_cd <= hi), -b_fd, 0.0)
    else:  # SmooSeg: l = fd_c * (1 - cd)
        b_l = b_fd * (1.0 - b_cd)
        b_g = tl.where(m_ij, -b_fd, 0.0)
    b_l = tl.where(m_ij, b_l, 0.0)
    return b_l, b_g, b_cd, m_ij


@triton.jit
def _cd_histogram(b_cd, m_ij, SIZE: tl.constexpr, HIST_BINS: tl.constexpr):
    """Counts of cd in HIST_BINS equal bins over [-1, 1]; outliers land in the end bins."""
    b_idx = tl.floor((b_cd + 1.0) * (HIST_BINS * 0.5)).to(tl.int32)
    b_idx = tl.where(m_ij, tl.minimum(tl.maximum(b_idx, 0), HIST_BINS - 1), 0)
    b_hist = tl.histogram(tl.reshape(b_idx, [SIZE]), HIST_BINS)
    # Masked elements were counted in bin 0; take them out. (tl.histogram's own mask is
    # not honoured by every Triton version's interpreter.)
    n_masked = SIZE - tl.sum(m_ij.to(tl.int32))
    return b_hist - tl.where(tl.arange(0, HIST_BINS) == 0, n_masked, 0)


@triton.autotune(
    configs=_CONFIGS,
    key=_TUNE_KEY,
    reset_to_zero=["dq"],
    prune_configs_by={"early_config_prune": _prune},
)
@triton.jit
def _pair_loss_fwd_kernel(
    f1, f2, c1, c2, r1, r2, s1, s2, row_off,
    loss_part, cd_part, hist_part, dp, dq,
    N, M, C, D, lo, hi, n_part,
    s_f1b, s_f1c, s_f1n, s_f2b, s_f2c, s_f2m,
    s_c1b, s_c1d, s_c1n, s_c2b, s_c2d, s_c2m,
    KIND: tl.constexpr, NEED_DP: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    STATS: tl.constexpr, HIST_BINS: tl.constexpr, D_PAD: tl.constexpr,
    PREC_F: tl.constexpr, PREC_C: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """One program: rows [i_n * BLOCK_N, +BLOCK_N) of image i_b against every column."""
    i_n, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_i = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_i = o_i < N
    o_d = tl.arange(0, D_PAD)
    m_d = o_d < D
    p_f1 = f1 + i_b * s_f1b
    p_f2 = f2 + i_b * s_f2b
    b_r1, b_s1, b_c1 = _load_side(r1, s1, c1, i_b, o_i, m_i, o_d, m_d, N, s_c1b, s_c1d, s_c1n)
    b_off = tl.load(row_off + i_b * N + o_i, mask=m_i, other=0.0)  # [BN]

    b_loss = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_cd_sum = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_hist = tl.zeros([HIST_BINS], dtype=tl.int32)
    b_dp = tl.zeros([BLOCK_N, D_PAD], dtype=tl.float32)
    for j0 in range(0, M, BLOCK_M):
        o_j = j0 + tl.arange(0, BLOCK_M)
        m_j = o_j < M
        b_r2, b_s2, b_c2 = _load_side(
            r2, s2, c2, i_b, o_j, m_j, o_d, m_d, M, s_c2b, s_c2d, s_c2m
        )  # [BM], [BM], [D_PAD, BM]
        b_l, b_g, b_cd, m_ij = _pair_tile(
            p_f1, p_f2, b_c1, b_c2, b_r1, b_r2, b_s1, b_s2, b_off,
            o_i, o_j, m_i, m_j, C, lo, hi, s_f1c, s_f1n, s_f2c, s_f2m,
            KIND, PREC_F, PREC_C, BLOCK_N, BLOCK_M, BLOCK_C,
        )  # fmt: skip
        b_loss += tl.sum(b_l, axis=1)
        if STATS:
            b_cd_sum += tl.sum(tl.where(m_ij, b_cd, 0.0), axis=1)
            b_hist += _cd_histogram(b_cd, m_ij, BLOCK_N * BLOCK_M, HIST_BINS)
        if NEED_DP:
            b_gs = (b_g * b_s2[None, :]).to(b_c2.dtype)
            b_dp = mma(b_gs, tl.trans(b_c2), b_dp, PREC_C)  # [BN, D_PAD]
        if ATOMIC_DQ:
            b_gs = (b_g * b_s1[:, None]).to(b_c1.dtype)
            b_dq = mma(tl.trans(b_gs), tl.trans(b_c1), None, PREC_C)  # [BM, D_PAD]
            tl.atomic_add(
                dq + i_b * D * M + o_d[None, :] * M + o_j[:, None],
                b_dq,
                mask=m_j[:, None] & m_d[None, :],
                sem="relaxed",
            )  # a pure sum: no ordering needed

    tl.store(loss_part + i_b * n_part + i_n, tl.sum(b_loss, axis=0))
    if STATS:
        tl.store(cd_part + i_b * n_part + i_n, tl.sum(b_cd_sum, axis=0))
        tl.store(hist_part + (i_b * n_part + i_n) * HIST_BINS + tl.arange(0, HIST_BINS), b_hist)
    if NEED_DP:
        tl.store(
            dp + i_b * D * N + o_d[None, :] * N + o_i[:, None],
            b_dp,
            mask=m_i[:, None] & m_d[None, :],
        )


@triton.autotune(configs=_CONFIGS, key=_TUNE_KEY, prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _pair_loss_dq_kernel(
    f1, f2, c1, c2, r1, r2, s1, s2, row_off, dq,
    N, M, C, D, lo, hi,
    s_f1b, s_f1c, s_f1n, s_f2b, s_f2c, s_f2m,
    s_c1b, s_c1d, s_c1n, s_c2b, s_c2d, s_c2m,
    KIND: tl.constexpr, NEED_DP: tl.constexpr, ATOMIC_DQ: tl.constexpr,
    STATS: tl.constexpr, D_PAD: tl.constexpr, PREC_F: tl.constexpr, PREC_C: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Deterministic dq: one program per column block reduces over every row block."""
    i_m, i_b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    o_j = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_j = o_j < M
    o_d = tl.arange(0, D_PAD)
    m_d = o_d < D
    p_f1 = f1 + i_b * s_f1b
    p_f2 = f2 + i_b * s_f2b
    b_r2, b_s2, b_c2 = _load_side(r2, s2, c2, i_b, o_j, m_j, o_d, m_d, M, s_c2b, s_c2d, s_c2m)

    b_dq = tl.zeros([BLOCK_M, D_PAD], dtype=tl.float32)
    for i0 in range(0, N, BLOCK_N):
        o_i = i0 + tl.arange(0, BLOCK_N)
        m_i = o_i < N
        b_r1, b_s1, b_c1 = _load_side(
            r1, s1, c1, i_b, o_i, m_i, o_d, m_d, N, s_c1b, s_c1d, s_c1n
        )  # [BN], [BN], [D_PAD, BN]
        b_off = tl.load(row_off + i_b * N + o_i, mask=m_i, other=0.0)
        _, b_g, _, _ = _pair_tile(
            p_f1, p_f2, b_c1, b_c2, b_r1, b_r2, b_s1, b_s2, b_off,
            o_i, o_j, m_i, m_j, C, lo, hi, s_f1c, s_f1n, s_f2c, s_f2m,
            KIND, PREC_F, PREC_C, BLOCK_N, BLOCK_M, BLOCK_C,
        )  # fmt: skip
        b_gs = (b_g * b_s1[:, None]).to(b_c1.dtype)
        b_dq = mma(tl.trans(b_gs), tl.trans(b_c1), b_dq, PREC_C)

    tl.store(
        dq + i_b * D * M + o_d[None, :] * M + o_j[:, None],
        b_dq,
        mask=m_j[:, None] & m_d[None, :],
    )


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision for operands of ``dtype``: IEEE fp32 when PyTorch asks for
    "highest" float32 matmul precision, else TF32 (ignored by 16-bit operands)."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "ieee"
    return "tf32"


def sweep(
    f1: torch.Tensor,
    f2: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    r1: torch.Tensor,
    r2: torch.Tensor,
    s1: torch.Tensor,
    s2: torch.Tensor,
    row_off: torch.Tensor,
    *,
    kind: int,
    lo: float,
    hi: float,
    need_dp: bool,
    need_dq: bool,
    hist_bins: int,
    deterministic: bool,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """Launches the fused sweep; same arguments and results as the torch sweep.

    ``f1, f2, c1, c2`` may have any strides (channels-last views included); ``r1, r2, s1,
    s2, row_off`` are contiguous float32. ``hist_bins`` must be 0 or a power of two.
    """
    B, C, N = f1.shape
    M = f2.shape[2]
    D = c1.shape[1]
    device = f1.device
    d_pad = max(16, triton.next_power_of_2(D))
    stats = hist_bins > 0
    atomic_dq = need_dq and not deterministic
    n_part = triton.cdiv(N, _MIN_BLOCK_N)
    f32 = torch.float32
    loss_part = torch.zeros(B, n_part, dtype=f32, device=device)
    cd_part = torch.zeros(B, n_part if stats else 1, dtype=f32, device=device)
    hist_part = torch.zeros(
        B, n_part if stats else 1, max(hist_bins, 1), dtype=torch.int32, device=device
    )
    dp = _alloc.empty((B, D, N), f32, device) if need_dp else None
    if atomic_dq:
        dq = torch.zeros(B, D, M, dtype=f32, device=device)
    else:
        dq = _alloc.empty((B, D, M), f32, device) if need_dq else None
    unused = torch.empty(1, dtype=f32, device=device)
    strides = (*f1.stride(), *f2.stride(), *c1.stride(), *c2.stride())
    flags = dict(
        KIND=kind, NEED_DP=need_dp, ATOMIC_DQ=atomic_dq, STATS=stats, D_PAD=d_pad,
        PREC_F=dot_precision(f1.dtype), PREC_C=dot_precision(c1.dtype),
    )  # fmt: skip

    _pair_loss_fwd_kernel[lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), B)](
        f1, f2, c1, c2, r1, r2, s1, s2, row_off,
        loss_part, cd_part, hist_part,
        dp if dp is not None else unused, dq if atomic_dq else unused,
        N, M, C, D, lo, hi, n_part, *strides,
        HIST_BINS=max(hist_bins, 1), **flags,
    )  # fmt: skip
    if need_dq and deterministic:
        _pair_loss_dq_kernel[lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), B)](
            f1, f2, c1, c2, r1, r2, s1, s2, row_off, dq,
            N, M, C, D, lo, hi, *strides, **flags,
        )  # fmt: skip
    loss_sum = loss_part.sum(dtype=torch.float64)
    cd_sum = cd_part.sum(dtype=torch.float64)
    hist = (
        hist_part.sum(dim=(0, 1), dtype=torch.int64)
        if stats
        else hist_part.new_zeros(0, dtype=torch.int64)
    )
    return loss_sum, dp, dq, cd_sum, hist
