"""Allocation of kernel outputs that a kernel must fill completely."""

from __future__ import annotations

import torch

from unseg_kernels import _env


def empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty``, or a NaN-filled tensor under ``UNSEG_POISON_ALLOC=1`` so that an
    unwritten element shows up in tests."""
    if _env.poison_alloc():
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)
