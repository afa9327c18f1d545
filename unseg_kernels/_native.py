"""Loads the compiled extension ``unseg_kernels._C`` with an actionable error."""

from __future__ import annotations

import functools
from types import ModuleType


@functools.cache
def native() -> ModuleType:
    """Returns the ``unseg_kernels._C`` module, raising ImportError with a fix if it is missing."""
    try:
        from unseg_kernels import _C
    except ImportError as err:
        raise ImportError(
            "unseg_kernels._C, the compiled extension, could not be imported. Install the "
            "package (`pip install unseg-kernels`, or `pip install .` in a source checkout) "
            "rather than importing it from the source tree."
        ) from err
    return _C
