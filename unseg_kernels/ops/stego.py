"""STEGO's contrastive correlation loss for one pair term, fused."""

from __future__ import annotations

import torch

from unseg_kernels import _validate, reference
from unseg_kernels.kernels import KIND_STEGO
from unseg_kernels.kernels.torch_pair_loss import cd_histogram
from unseg_kernels.ops._pair import CD_HIST_BINS, CdStats, pair_loss


def check_pair_inputs(
    f1: object, f2: object, c1: object, c2: object, code_names: tuple[str, str] = ("c1", "c2")
) -> torch.device:
    """Validates a pair term's four maps: ``f1 [B, C, H, W]``, ``f2 [B, C, I, J]``,
    ``c1 [B, D, H, W]``, ``c2 [B, D, I, J]`` on one device. Returns the device."""
    n1, n2 = code_names
    _validate.tensor("f1", f1, "[B, C, H, W]")
    _validate.tensor("f2", f2, "[B, C, I, J]")
    _validate.tensor(n1, c1, "[B, D, H, W]")
    _validate.tensor(n2, c2, "[B, D, I, J]")
    B, C, H, W = f1.shape
    _, _, I, J = f2.shape
    if f2.shape[:2] != (B, C):
        raise ValueError(
            f"f2 must have shape [B, C, I, J] with B={B}, C={C} as f1, got {tuple(f2.shape)}"
        )
    if c1.shape[0] != B or c1.shape[2:] != (H, W):
        raise ValueError(
            f"{n1} must have shape [B, D, H, W] with B={B}, H={H}, W={W} as f1, "
            f"got {tuple(c1.shape)}"
        )
    if c2.shape[0] != B or c2.shape[2:] != (I, J) or c2.shape[1] != c1.shape[1]:
        raise ValueError(
            f"{n2} must have shape [B, D, I, J] with B={B}, D={c1.shape[1]}, I={I}, J={J} "
            f"as {n1} and f2, got {tuple(c2.shape)}"
        )
    return _validate.same_device(f1=f1, f2=f2, **{n1: c1, n2: c2})


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
        f1, f2, c1, c2 = _triton_operands(f1, f2, c1, c2)
    return pair_loss(
        f1, f2, c1, c2, shift,
        pointwise=pointwise, kind=KIND_STEGO, lo=lo, hi=hi, backend=backend,
        deterministic=deterministic, return_stats=return_stats,
    )  # fmt: skip


def _triton_operands(f1, f2, c1, c2):
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
