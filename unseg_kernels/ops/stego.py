"""STEGO's contrastive correlation loss for one pair term, fused."""

from __future__ import annotations

import torch

from unseg_kernels import _validate, reference
from unseg_kernels.kernels import KIND_STEGO
from unseg_kernels.kernels.torch_pair_loss import cd_histogram
from unseg_kernels.ops._pair import (
    CD_HIST_BINS,
    CdStats,
    check_pair_inputs,
    pair_loss,
    triton_operands,
)


def stego_corr_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    shift: float,
    *,
    pointwise: bool = True,
    zero_clamp: bool = True,
    stabilize: bool = False,
    backend: str = "auto",
    deterministic: bool | None = None,
    return_stats: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, CdStats]:
    """One STEGO pair term (SPEC section 2): ``mean(-clamp(cd, lo, hi) * (fd_c - shift))``.

    ``fd`` correlates the L2-normalised features (no gradient), optionally with STEGO's
    pointwise centering; ``cd`` correlates the normalised codes. No ``[B, H, W, I, J]``
    tensor is formed except by ``backend="reference"``.

    Args:
        f1: backbone features ``[B, C, H, W]`` (treated as constants).
        f2: backbone features ``[B, C, I, J]``.
        c1: codes ``[B, D, H, W]``; receives a gradient.
        c2: codes ``[B, D, I, J]``; receives a gradient. May be ``c1`` itself (the self
            term), whose gradient is then the sum of both sides.
        shift: the term's shift b.
        pointwise: STEGO's per-query centering of fd.
        zero_clamp: clamp cd below at 0 (else at -9999).
        stabilize: clamp cd above at 0.8 (STEGO's ``stabalize``).
        backend: "auto" (Triton on CUDA when importable, else "torch"), "torch" (blocked,
            memory O(block x M), CPU or GPU), "triton" (fused kernels, float32/16/bf16), or
            "reference" (materialises everything; for testing).
        deterministic: Triton only: reduce the gradient of c2 without float atomics, at
            about twice the cost of the forward sweep. None follows
            ``torch.are_deterministic_algorithms_enabled()``. The torch backend is always
            deterministic.
        return_stats: also return :class:`CdStats` (mean and histogram of cd), computed in
            the same sweep.

    Returns:
        The loss, a 0-d float32 tensor (float64 if an input is float64), or
        ``(loss, stats)`` when ``return_stats``.

    Example:
        >>> f = torch.randn(2, 384, 28, 28)
        >>> code = torch.randn(2, 70, 28, 28, requires_grad=True)
        >>> loss = stego_corr_loss(f, f, code, code, shift=0.18)
        >>> loss.backward()
    """
    device = check_pair_inputs(f1, f2, c1, c2)
    shift = _validate.real("shift", shift)
    backend = _validate.resolve_backend(backend, device, [f1.dtype, f2.dtype, c1.dtype, c2.dtype])
    lo = 0.0 if zero_clamp else -9999.0
    hi = 0.8 if stabilize else float("inf")
    if backend == "reference":
        loss, cd = reference.stego_corr_loss(
            f1, f2, c1, c2, shift, pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize
        )
        if return_stats:
            return loss, CdStats(cd.detach().mean(), cd_histogram(cd, CD_HIST_BINS))
        return loss
    if backend == "triton":
        f1, f2, c1, c2 = triton_operands(f1, f2, c1, c2)
    return pair_loss(
        f1, f2, c1, c2, shift,
        pointwise=pointwise, kind=KIND_STEGO, lo=lo, hi=hi, backend=backend,
        deterministic=deterministic, return_stats=return_stats,
    )  # fmt: skip
