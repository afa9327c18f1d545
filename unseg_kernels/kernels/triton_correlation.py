"""Triton kernel materialising the correlation tensor, normalisation fused.

``out[b, i, j] = ra[b, i] rb[b, j] sum_c a[b, c, i] b[b, c, j]`` for a [BLOCK_N, BLOCK_M]
tile per program, reading ``a`` and ``b`` in their own strides and writing ``out`` once in
the requested dtype. tl.dot precision as in :mod:`triton_pair_loss`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from unseg_kernels import _alloc
from unseg_kernels.kernels.triton_pair_loss import channel_dot, dot_precision, tile_configs


@triton.autotune(configs=tile_configs(), key=["N", "M", "C"])
@triton.jit
def _correlation_kernel(
    a, b, ra, rb, out, N, M, C,
    s_ab, s_ac, s_an, s_bb, s_bc, s_bm,
    NORMALIZE: tl.constexpr, PREC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):  # fmt: skip
    i_n, i_m, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_i = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    o_j = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_i, m_j = o_i < N, o_j < M
    b_out = channel_dot(
        a + i_b * s_ab, b + i_b * s_bb, o_i, o_j, m_i, m_j, C, s_ac, s_an, s_bc, s_bm,
        PREC, BLOCK_N, BLOCK_M, BLOCK_C,
    )  # fmt: skip
    if NORMALIZE:
        b_ra = tl.load(ra + i_b * N + o_i, mask=m_i, other=0.0)
        b_rb = tl.load(rb + i_b * M + o_j, mask=m_j, other=0.0)
        b_out = b_out * b_ra[:, None] * b_rb[None, :]
    tl.store(
        out + i_b * N * M + o_i[:, None] * M + o_j[None, :],
        b_out.to(out.dtype.element_ty),
        mask=m_i[:, None] & m_j[None, :],
    )


def correlation(
    a: torch.Tensor, b: torch.Tensor, ra: torch.Tensor | None, rb: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:  # fmt: skip
    """``[B, C, N] x [B, C, M] -> [B, N, M]``, scaled by the inverse norms ``ra``, ``rb``
    (float32 ``[B, N]``, ``[B, M]``) when given."""
    B, C, N = a.shape
    M = b.shape[2]
    out = _alloc.empty((B, N, M), out_dtype, a.device)
    normalize = ra is not None
    unused = torch.empty(1, dtype=torch.float32, device=a.device)
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"]), B)  # noqa: E731
    _correlation_kernel[grid](
        a, b, ra if normalize else unused, rb if normalize else unused, out, N, M, C,
        *a.stride(), *b.stride(), NORMALIZE=normalize, PREC=dot_precision(a.dtype),
    )  # fmt: skip
    return out
