"""Input checks shared by the public ops: each error names the argument, what it got and
what was expected, and runs before any kernel launch."""

from __future__ import annotations

import numbers

import torch

from unseg_kernels import _env

BACKENDS = ("auto", "reference", "torch", "triton")


def tensor(name: str, t: object, layout: str) -> torch.Tensor:
    """Checks that ``t`` is a non-empty floating-point tensor of the rank ``layout`` names."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {layout}, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    ndim = layout.count(",") + 1
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(t.shape)}")
    return t


def real(name: str, value: object) -> float:
    """Checks that ``value`` is a finite real number (python or 0-d tensor) and returns it."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def same_device(**tensors: torch.Tensor) -> torch.device:
    """Checks that all tensors live on one device and returns it."""
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.device != first.device:
            raise ValueError(
                f"{name} is on {t.device} but {first_name} is on {first.device}; "
                "all inputs must be on the same device"
            )
    return first.device


def resolve_backend(backend: object, device: torch.device, dtypes: list[torch.dtype]) -> str:
    """Maps ``backend`` to "reference", "torch" or "triton", checking that it can run here.

    "auto" picks Triton for CUDA tensors of a dtype Triton supports when triton is
    importable, and the blocked torch path otherwise.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    has_fp64 = torch.float64 in dtypes
    if backend == "auto":
        use_triton = device.type == "cuda" and _env.triton_available() and not has_fp64
        return "triton" if use_triton else "torch"
    if backend == "triton":
        if not _env.triton_available():
            raise ValueError(
                "backend='triton' needs the triton package (pip install triton); "
                "use backend='torch' without it"
            )
        if device.type != "cuda" and not _env.triton_interpreter():
            raise ValueError(
                f"backend='triton' needs CUDA tensors, got tensors on {device} "
                "(set TRITON_INTERPRET=1 before importing unseg_kernels to interpret the "
                "kernels on CPU, or use backend='torch')"
            )
        if has_fp64:
            raise TypeError(
                "backend='triton' takes float32, float16 or bfloat16 inputs, got float64; "
                "use backend='torch' for float64"
            )
    return backend


def integer(name: str, value: object, low: int | None = None, high: int | None = None) -> int:
    """Checks that ``value`` is a python int (not bool) in ``[low, high]`` and returns it."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def choice(name: str, value: object, options: tuple[str, ...]) -> str:
    """Checks that ``value`` is one of the strings ``options`` and returns it."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def finite(name: str, t: torch.Tensor) -> torch.Tensor:
    """Checks that ``t`` holds no NaN or infinity (min and max propagate both, and need no
    temporary the size of ``t``; a host sync on CUDA)."""
    lo, hi = torch.aminmax(t)
    if not (bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))):
        raise ValueError(f"{name} must be finite, got NaN or infinite values (min {lo}, max {hi})")
    return t
