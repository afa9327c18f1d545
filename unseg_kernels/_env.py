"""Process-wide switches read from the environment, all in one place.

| variable | effect |
|---|---|
| ``TRITON_INTERPRET=1`` | Triton kernels run on CPU tensors through Triton's interpreter (slow; for tests). Read by Triton when our kernel modules are imported, so set it before importing ``unseg_kernels``. |
| ``UNSEG_POISON_ALLOC=1`` | Buffers the kernels are meant to fill completely are allocated full of NaN instead of uninitialised, so an unwritten tile fails a test loudly. |
| ``UNSEG_CPU_ISA`` | SIMD kernels of the native CPU ops: ``auto`` (default: AVX2 + FMA when the CPU has them), ``generic`` (portable 4-wide) or ``avx2``. Read at each call. |
"""

from __future__ import annotations

import functools
import importlib.util
import os


def triton_interpreter() -> bool:
    """True when Triton kernels run through the interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def poison_alloc() -> bool:
    """True when fresh kernel outputs are NaN-filled (``UNSEG_POISON_ALLOC=1``)."""
    return os.environ.get("UNSEG_POISON_ALLOC", "0") == "1"


@functools.cache
def triton_available() -> bool:
    """True when the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


CPU_ISAS = {"auto": 0, "generic": 1, "avx2": 2}


def cpu_isa() -> int:
    """SIMD kernels of the native CPU ops (``UNSEG_CPU_ISA``): "auto" (default, the best the
    CPU supports), "generic" (portable 4-wide) or "avx2"; returned as the native code."""
    name = os.environ.get("UNSEG_CPU_ISA", "auto")
    if name not in CPU_ISAS:
        raise ValueError(f"UNSEG_CPU_ISA must be one of {sorted(CPU_ISAS)}, got {name!r}")
    return CPU_ISAS[name]
