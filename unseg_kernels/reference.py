"""Naive PyTorch references: the test oracle, written for reading, not for speed.

Each function materialises everything, exactly as the original STEGO code does (SPEC
sections 1-2). Tests, benchmarks and the ``backend="reference"`` path all use this single
copy; nothing else in the package should re-type these formulas.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-10


def norm(t: torch.Tensor) -> torch.Tensor:
    """L2-normalises over the channel axis (dim 1) with eps 1e-10, as STEGO's ``norm``."""
    return F.normalize(t, dim=1, eps=NORM_EPS)


def correlation(a: torch.Tensor, b: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``[B, C, H, W] x [B, C, I, J] -> [B, H, W, I, J]``, STEGO's ``tensor_correlation``."""
    if normalize:
        a, b = norm(a), norm(b)
    return torch.einsum("nchw,ncij->nhwij", a, b)


def feature_correlation(f1: torch.Tensor, f2: torch.Tensor, pointwise: bool = True) -> torch.Tensor:
    """The no-gradient feature correlation ``fd`` with STEGO's pointwise centering (step 3)."""
    with torch.no_grad():
        fd = correlation(f1, f2)
        if pointwise:
            old_mean = fd.mean()
            fd = fd - fd.mean([3, 4], keepdim=True)
            fd = fd - fd.mean() + old_mean
    return fd


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """One STEGO pair term (SPEC section 2), materialised.

    Returns:
        ``(loss, cd)``: the mean of the elementwise loss, and the code correlation
        ``cd`` ``[B, H, W, I, J]`` that STEGO logs as a histogram.
    """
    fd = feature_correlation(f1, f2, pointwise)
    cd = correlation(c1, c2)
    min_val = 0.0 if zero_clamp else -9999.0
    clamped = cd.clamp(min_val, 0.8) if stabilize else cd.clamp(min_val)
    loss = -clamped * (fd - shift)
    return loss.mean(), cd


def smooseg_smooth_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    shift: float,
    *,
    pointwise: bool = True,
) -> torch.Tensor:
    """One SmooSeg smoothness pair term (SPEC section 3), materialised:
    ``mean((W - shift) * (1 - norm(a1) . norm(a2)))``."""
    w = feature_correlation(f1, f2, pointwise)
    similarity = correlation(a1, a2)
    return ((w - shift) * (1 - similarity)).mean()
