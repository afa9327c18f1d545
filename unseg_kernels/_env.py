"""Process-wide switches read from the environment, all in one place.

- ``TRITON_INTERPRET=1``: Triton kernels run on CPU tensors through Triton's interpreter
  (slow; for tests). Triton reads it when our kernel modules are imported, so set it before
  importing ``unseg_kernels``.
- ``UNSEG_AUTOTUNE=0``: Triton kernels skip autotuning and use their first configuration
  (tests: correctness needs no tuning, and each new shape would compile every candidate).
- ``UNSEG_POISON_ALLOC=1``: buffers the kernels must fill completely are allocated full of
  NaN instead of uninitialised, so an unwritten tile fails a test loudly.
- ``UNSEG_CPU_BASELINE=1``: native CPU kernels use the baseline instruction set (SSE2 on
  x86-64, NEON on ARM) even where AVX2 is available; read at every call. For testing both
  code paths on one machine.
- ``UNSEG_CPU_ISA``: SIMD kernels of the native CPU ops: ``auto`` (default: AVX2 + FMA when
  the CPU has them), ``generic`` (portable) or ``avx2``. Read at each call.
"""

from __future__ import annotations

import functools
import importlib.util
import os


def triton_interpreter() -> bool:
    """True when Triton kernels run through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def autotune() -> bool:
    """False when Triton autotuning is switched off (``UNSEG_AUTOTUNE=0``)."""
    return os.environ.get("UNSEG_AUTOTUNE", "1") != "0"


def poison_alloc() -> bool:
    """True when fresh kernel outputs are NaN-filled (``UNSEG_POISON_ALLOC=1``)."""
    return os.environ.get("UNSEG_POISON_ALLOC", "0") == "1"


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def cpu_baseline() -> bool:
    """True when native CPU kernels must not use AVX2 (``UNSEG_CPU_BASELINE=1``)."""
    return os.environ.get("UNSEG_CPU_BASELINE", "0") == "1"


CPU_ISAS = {"auto": 0, "generic": 1, "avx2": 2}


def cpu_isa() -> int:
    """SIMD kernels of the native CPU ops (``UNSEG_CPU_ISA``): "auto" (default, the best the
    CPU supports), "generic" (portable 4-wide) or "avx2"; returned as the native code."""
    name = os.environ.get("UNSEG_CPU_ISA", "auto")
    if name not in CPU_ISAS:
        raise ValueError(f"UNSEG_CPU_ISA must be one of {sorted(CPU_ISAS)}, got {name!r}")
    return CPU_ISAS[name]
