"""Comparison helpers for tests of kernels against their references."""

from __future__ import annotations

import torch


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str = "") -> None:
    """Asserts ``max|actual - expected| <= tol * max|expected|`` (relative to the largest
    reference value, so near-zero entries do not dominate) and that ``actual`` has no NaN
    where ``expected`` has none.

    On failure the message gives the worst index, both values there, the max and RMS
    errors relative to the reference's scale, and the NaN count.
    """
    label = f"{name}: " if name else ""
    if actual.shape != expected.shape:
        raise AssertionError(
            f"{label}shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
        )
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    if (nan_a & ~nan_e).any():
        raise AssertionError(
            f"{label}{int((nan_a & ~nan_e).sum())} NaN where the reference has none"
        )
    valid = ~nan_e
    a, e = a[valid], e[valid]
    if e.numel() == 0:
        return
    scale = e.abs().max().clamp_min(torch.finfo(torch.float64).tiny)
    err = (a - e).abs()
    worst = int(err.argmax())
    max_rel = float(err[worst] / scale)
    rms_rel = float(err.pow(2).mean().sqrt() / scale)
    if not max_rel <= tol:
        index = tuple(int(i) for i in torch.nonzero(valid)[worst]) if valid.dim() else ()
        raise AssertionError(
            f"{label}max error {max_rel:.3e} of the reference's scale {float(scale):.3e} "
            f"exceeds {tol:.1e} (RMS {rms_rel:.3e}); worst at {index}: "
            f"{float(a[worst]):.9g} vs {float(e[worst]):.9g}"
        )


def synchronize(device: torch.device | str) -> None:
    """Waits for queued CUDA work on ``device`` (no-op on CPU), so a timed call measures
    the kernels rather than their launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
