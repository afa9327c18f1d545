"""The fused pair loss shared by STEGO and SmooSeg: statistics, sweep, gradient, autograd.

For one pair term with features f1 [B, C, N], f2 [B, C, M], codes c1 [B, D, N],
c2 [B, D, M] and shift b (SPEC sections 2-3), u = norm(f1), v = norm(f2), p = norm(c1),
q = norm(c2):

    fd_c[n, i, j] = u_i . v_j - u_i . vbar_n + m - b      (pointwise centering, closed form)
                  = u_i . v_j - b                          (pointwise=False)
    cd[n, i, j]   = p_i . q_j
    loss          = mean over (n, i, j) of l(fd_c, cd)

with vbar_n the mean of v over positions and m = mean_n(ubar_n . vbar_n) the mean of fd
over the whole batch. So centering needs one O(tokens) pass for vbar, ubar and u_i . vbar
(the per-row offset), and the tile sweep needs no second pass.

The sweep (torch or Triton) returns the loss sum and the gradients w.r.t. the normalised
codes, ``dp = sum_j G_ij q_j`` and ``dq = sum_i G_ij p_i`` with ``G = dl/dcd``. Here they
are scaled by 1/count and taken through the normalisation,
``dc = (dp - p (p . dp)) / max(|c|, eps)`` (no projection where |c| <= eps, as
``F.normalize``), in the forward pass: the loss is a scalar, so backward only multiplies
the stored gradients by the upstream gradient.

The whole computation is one torch custom op (``unseg_kernels::pair_loss``) with a
registered autograd formula, so ``torch.compile`` keeps it in the graph.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from unseg_kernels import _validate
from unseg_kernels.kernels import torch_pair_loss
from unseg_kernels.reference import NORM_EPS

CD_HIST_BINS = 64


class CdStats(NamedTuple):
    """Statistics of the code correlation ``cd`` over every (n, h, w, i, j) of a term.

    Attributes:
        mean: 0-d tensor, the mean of cd.
        histogram: ``[CD_HIST_BINS]`` int64 counts in equal bins over [-1, 1]; values
            outside fall in the end bins. ``bin_edges()`` gives the edges.
    """

    mean: torch.Tensor
    histogram: torch.Tensor

    def bin_edges(self) -> torch.Tensor:
        """``[bins + 1]`` edges of the histogram's bins."""
        return torch.linspace(-1.0, 1.0, self.histogram.numel() + 1)


def inv_norm(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """``1 / max(|x[:, :, i]|, eps)`` over dim 1 of ``[B, K, N]``, as ``[B, N]`` in ``acc``."""
    return torch.linalg.vector_norm(x, dim=1, dtype=acc).clamp_min_(NORM_EPS).reciprocal_()


def _feature_stats(
    f1: torch.Tensor, f2: torch.Tensor, shift: float, pointwise: bool, acc: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse norms r1 [B, N], r2 [B, M] and the per-row offset ``row_off`` [B, N]."""
    B, _, N = f1.shape
    M = f2.shape[2]
    r1 = f1.new_empty(B, N, dtype=acc)
    r2 = f1.new_empty(B, M, dtype=acc)
    u_dot_vbar = torch.zeros_like(r1)
    pair_means = f1.new_zeros(B, dtype=acc)
    # Maps not already in the accumulation dtype are cast one image at a time, so a 16-bit
    # batch never gets a full float32 copy.
    step = B if f1.dtype == acc and f2.dtype == acc else 1
    for n0 in range(0, B, step):
        ns = slice(n0, n0 + step)
        a, b = f1[ns].to(acc), f2[ns].to(acc)  # [s, C, N], [s, C, M]
        r1[ns], r2[ns] = inv_norm(a, acc), inv_norm(b, acc)
        if pointwise:
            ubar = torch.bmm(a, r1[ns, :, None])[..., 0] / N  # [s, C]
            vbar = torch.bmm(b, r2[ns, :, None])[..., 0] / M
            u_dot_vbar[ns] = torch.bmm(vbar[:, None, :], a)[:, 0] * r1[ns]
            pair_means[ns] = (ubar * vbar).sum(-1)
    return r1, r2, (pair_means.mean() - shift) - u_dot_vbar if pointwise else u_dot_vbar - shift


def normalize_backward(c: torch.Tensor, s: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Gradient w.r.t. raw codes ``c`` [B, D, N] of ``p = c * s`` given ``g = dL/dp``."""
    p = c.to(g.dtype) * s[:, None, :]
    proj = (p * g).sum(1, keepdim=True)
    proj = torch.where(s[:, None, :] < 1.0 / NORM_EPS, proj, 0.0)  # |c| > eps
    return (g - p * proj) * s[:, None, :]


@torch.library.custom_op("unseg_kernels::pair_loss", mutates_args=())
def pair_loss_op(
    f1: torch.Tensor,
    f2: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    shift: float,
    pointwise: bool,
    kind: int,
    lo: float,
    hi: float,
    backend: str,
    grad_c1: bool,
    grad_c2: bool,
    deterministic: bool,
    hist_bins: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused pair loss on validated 4-D inputs.

    Returns ``(loss, dc1, dc2, cd_mean, cd_hist)``: the mean loss, the gradients of the loss
    w.r.t. c1 and c2 (float32/64, empty unless requested), and the cd statistics (empty
    histogram unless ``hist_bins``).
    """
    # Under autocast the sweep's matmuls would drop to fp16/bf16 behind the accumulation
    # dtype's back; the kernels choose their own precision, so autocast is off inside.
    with torch.autocast(f1.device.type, enabled=False):
        acc = torch.float64 if torch.float64 in (f1.dtype, c1.dtype) else torch.float32
        B, _, H, W = c1.shape
        N, M = H * W, c2.shape[2] * c2.shape[3]
        f1v, f2v = f1.flatten(2), f2.flatten(2)  # [B, C, N] views (channels-last stays a view)
        c1v, c2v = c1.flatten(2), c2.flatten(2)
        r1, r2, row_off = _feature_stats(f1v, f2v, shift, pointwise, acc)
        s1, s2 = inv_norm(c1v, acc), inv_norm(c2v, acc)
        if backend == "triton":
            from unseg_kernels.kernels import triton_pair_loss

            sweep = triton_pair_loss.sweep
        else:
            sweep = torch_pair_loss.sweep
        loss_sum, dp, dq, cd_sum, hist = sweep(
            f1v, f2v, c1v, c2v, r1, r2, s1, s2, row_off,
            kind=kind, lo=lo, hi=hi, need_dp=grad_c1, need_dq=grad_c2,
            hist_bins=hist_bins, deterministic=deterministic,
        )  # fmt: skip
        count = B * N * M
        loss = (loss_sum / count).to(acc)
        dc1 = normalize_backward(c1v, s1, dp / count).view(c1.shape) if grad_c1 else r1.new_empty(0)
        dc2 = normalize_backward(c2v, s2, dq / count).view(c2.shape) if grad_c2 else r1.new_empty(0)
        return loss, dc1, dc2, (cd_sum / count).to(acc), hist


@pair_loss_op.register_fake
def _(f1, f2, c1, c2, shift, pointwise, kind, lo, hi, backend, grad_c1, grad_c2, det, hist_bins):
    acc = torch.float64 if torch.float64 in (f1.dtype, c1.dtype) else torch.float32
    loss = c1.new_empty((), dtype=acc)
    dc1 = c1.new_empty(c1.shape if grad_c1 else (0,), dtype=acc)
    dc2 = c2.new_empty(c2.shape if grad_c2 else (0,), dtype=acc)
    return loss, dc1, dc2, c1.new_empty((), dtype=acc), c1.new_empty(hist_bins, dtype=torch.int64)


def register_precomputed_backward(op) -> None:
    """Autograd for ops shaped ``(f1, f2, x1, x2, *flags) -> (loss, dx1, dx2, *stats)`` that
    compute the gradients of their scalar loss w.r.t. x1 and x2 in the forward pass:
    backward only scales them by the upstream gradient."""

    def setup_context(ctx, inputs, output):
        _, dx1, dx2, *stats = output
        ctx.n_inputs = len(inputs)
        ctx.dtypes = (inputs[2].dtype, inputs[3].dtype)
        ctx.save_for_backward(dx1, dx2)
        ctx.mark_non_differentiable(dx1, dx2, *stats)

    def backward(ctx, grad_loss, *_):
        dx1, dx2 = ctx.saved_tensors
        need = ctx.needs_input_grad
        g1 = (dx1 * grad_loss).to(ctx.dtypes[0]) if need[2] else None
        g2 = (dx2 * grad_loss).to(ctx.dtypes[1]) if need[3] else None
        return None, None, g1, g2, *([None] * (ctx.n_inputs - 4))

    op.register_autograd(backward, setup_context=setup_context)


register_precomputed_backward(pair_loss_op)


def pair_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    shift: float,
    *,
    pointwise: bool,
    kind: int,
    lo: float,
    hi: float,
    backend: str,
    deterministic: bool | None,
    return_stats: bool,
) -> torch.Tensor | tuple[torch.Tensor, CdStats]:
    """Calls the custom op on validated inputs ("torch" or "triton" backend) and unpacks it."""
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    grad_on = torch.is_grad_enabled()
    loss, _, _, cd_mean, hist = pair_loss_op(
        f1, f2, c1, c2, shift, pointwise, kind, lo, hi, backend,
        grad_on and c1.requires_grad, grad_on and c2.requires_grad,
        deterministic, CD_HIST_BINS if return_stats else 0,
    )  # fmt: skip
    if return_stats:
        return loss, CdStats(cd_mean, hist)
    return loss


def check_pair_inputs(
    f1: object,
    f2: object,
    c1: object,
    c2: object,
    code_names: tuple[str, str] = ("c1", "c2"),
    code_dim: str = "D",
) -> torch.device:
    """Validates a pair term's four maps: ``f1 [B, C, H, W]``, ``f2 [B, C, I, J]``,
    ``c1 [B, D, H, W]``, ``c2 [B, D, I, J]`` on one device. Returns the device."""
    n1, n2 = code_names
    _validate.tensor("f1", f1, "[B, C, H, W]")
    _validate.tensor("f2", f2, "[B, C, I, J]")
    _validate.tensor(n1, c1, f"[B, {code_dim}, H, W]")
    _validate.tensor(n2, c2, f"[B, {code_dim}, I, J]")
    B, C, H, W = f1.shape
    _, _, I, J = f2.shape
    if f2.shape[:2] != (B, C):
        raise ValueError(
            f"f2 must have shape [B, C, I, J] with B={B}, C={C} as f1, got {tuple(f2.shape)}"
        )
    if c1.shape[0] != B or c1.shape[2:] != (H, W):
        raise ValueError(
            f"{n1} must have shape [B, {code_dim}, H, W] with B={B}, H={H}, W={W} as f1, "
            f"got {tuple(c1.shape)}"
        )
    if c2.shape[0] != B or c2.shape[2:] != (I, J) or c2.shape[1] != c1.shape[1]:
        raise ValueError(
            f"{n2} must have shape [B, {code_dim}, I, J] with B={B}, {code_dim}={c1.shape[1]}, "
            f"I={I}, J={J} as {n1} and f2, got {tuple(c2.shape)}"
        )
    return _validate.same_device(f1=f1, f2=f2, **{n1: c1, n2: c2})


def triton_operands(f1, f2, c1, c2):
    """Gives each dot's two operands one dtype and checks the code width the kernel holds."""
    from unseg_kernels.kernels.triton_pair_loss import MAX_CODE_DIM

    if c1.shape[1] > MAX_CODE_DIM:
        raise ValueError(
            f"backend='triton' takes codes of at most {MAX_CODE_DIM} channels, got "
            f"D={c1.shape[1]}; use backend='torch'"
        )
    if f1.dtype != f2.dtype:
        dtype = torch.promote_types(f1.dtype, f2.dtype)
        f1, f2 = f1.to(dtype), f2.to(dtype)
    if c1.dtype != c2.dtype:
        dtype = torch.promote_types(c1.dtype, c2.dtype)
        c1, c2 = c1.to(dtype), c2.to(dtype)
    return f1, f2, c1, c2
