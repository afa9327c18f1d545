"""Point sampling and negative pairing shared by the STEGO and SmooSeg losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def super_perm(
    size: int, device: torch.device | str | None = None, *, generator=None
) -> torch.Tensor:
    """A random permutation of ``range(size)`` whose fixed points i are replaced by
    ``(i + 1) % size``: never pairs an image with itself (for size > 1); may repeat an
    index. STEGO's and SmooSeg's negative pairing."""
    perm = torch.randperm(size, device=device, dtype=torch.long, generator=generator)
    perm[perm == torch.arange(size, device=perm.device)] += 1
    return perm % size


def random_coords(
    batch: int, samples: int, device: torch.device, *, generator=None
) -> torch.Tensor:
    """Uniform sampling coordinates in [-1, 1], ``[batch, samples, samples, 2]``."""
    u = torch.rand(batch, samples, samples, 2, device=device, generator=generator)
    return u * 2 - 1


def sample(t: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``t [B, C, H, W]`` at ``coords [B, S, S, 2]`` -> ``[B, C, S, S]``,
    border padding, corners aligned, coordinates transposed first (as STEGO's ``sample``)."""
    grid = coords.permute(0, 2, 1, 3).to(t.dtype)
    return F.grid_sample(t, grid, padding_mode="border", align_corners=True)
