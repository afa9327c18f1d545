"""Blocked PyTorch sweep of the fused pair losses (the ``backend="torch"`` path).

Same contract as :func:`unseg_kernels.kernels.triton_pair_loss.sweep` (see
:mod:`unseg_kernels.ops._pair` for the math): rows of the first map are taken in blocks, so
the largest temporary is ``[B, block, M]`` and memory stays O(tokens) plus a fixed budget.
The gradient is computed in the same sweep as the loss, so backward never revisits a tile.
Runs on CPU and CUDA, in float32 or float64.
"""

from __future__ import annotations

import torch

from unseg_kernels.kernels import KIND_STEGO

# Elements of one [B, block, M] temporary; about six of them live at once.
_BLOCK_ELEMS = {"cpu": 1 << 22, "cuda": 1 << 25}


def cd_histogram(cd: torch.Tensor, bins: int) -> torch.Tensor:
    """Counts of ``cd`` in ``bins`` equal bins over [-1, 1] (values outside go to the end
    bins), int64. Bin of x: ``clamp(floor((x + 1) * bins / 2), 0, bins - 1)``."""
    idx = torch.floor((cd.detach() + 1.0) * (bins * 0.5)).clamp_(0, bins - 1).long()
    return torch.bincount(idx.flatten(), minlength=bins)


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
    """One pass over all (i, j) tiles. Always deterministic (``deterministic`` is accepted
    for the common signature).

    Args:
        f1, f2: raw features ``[B, C, N]``, ``[B, C, M]``.
        c1, c2: raw codes ``[B, D, N]``, ``[B, D, M]``.
        r1, r2, s1, s2: inverse L2 norms of f1, f2, c1, c2 per position, ``[B, N|M]``,
            in the accumulation dtype.
        row_off: ``[B, N]`` added to every feature correlation of row i (centering - shift).

    Returns:
        ``(loss_sum, dp, dq, cd_sum, hist)``: the float64 sum of the elementwise loss;
        ``dp = sum_j G_ij q_j`` ``[B, D, N]`` and ``dq = sum_i G_ij p_i`` ``[B, D, M]``
        (gradients w.r.t. the normalised codes, before the 1/count of the mean), or None
        when not needed; the sum of cd and its histogram (empty when ``hist_bins == 0``).
    """
    del deterministic
    acc = r1.dtype
    B, _, N = f1.shape
    M = f2.shape[2]
    D = c1.shape[1]
    device = f1.device
    rows = max(1, _BLOCK_ELEMS.get(device.type, 1 << 24) // (B * M))

    v = f2.to(acc) * r2[:, None, :]  # [B, C, M]
    q = c2.to(acc) * s2[:, None, :]  # [B, D, M]
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    cd_sum = torch.zeros((), dtype=torch.float64, device=device)
    hist = torch.zeros(hist_bins, dtype=torch.int64, device=device)
    dp = torch.empty(B, D, N, dtype=acc, device=device) if need_dp else None
    dq = torch.zeros(B, D, M, dtype=acc, device=device) if need_dq else None

    for i0 in range(0, N, rows):
        rs = slice(i0, min(N, i0 + rows))
        u = f1[:, :, rs].to(acc) * r1[:, None, rs]  # [B, C, n]
        p = c1[:, :, rs].to(acc) * s1[:, None, rs]  # [B, D, n]
        fd = torch.baddbmm(row_off[:, rs, None], u.transpose(1, 2), v)  # [B, n, M]
        cd = torch.bmm(p.transpose(1, 2), q)  # [B, n, M]
        if hist_bins:
            cd_sum += cd.sum(dtype=torch.float64)
            hist += cd_histogram(cd, hist_bins)
        # In-place updates below keep the live [B, n, M] temporaries at three.
        if kind == KIND_STEGO:
            keep = cd >= lo if hi == float("inf") else (cd >= lo) & (cd <= hi)
            loss_rows = torch.linalg.vecdot(cd.clamp_(lo, hi), fd).neg_()
            grad = fd.neg_().mul_(keep)  # dl/dcd
        else:
            loss_rows = fd.sum(-1) - torch.linalg.vecdot(cd, fd)
            grad = fd.neg_()
        loss_sum += loss_rows.sum(dtype=torch.float64)
        if dp is not None:
            dp[:, :, rs] = torch.bmm(q, grad.transpose(1, 2))  # [B, D, n]
        if dq is not None:
            dq.baddbmm_(p, grad)  # [B, D, M]
    return loss_sum, dp, dq, cd_sum, hist
