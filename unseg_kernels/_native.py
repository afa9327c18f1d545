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
            "package (`pip install unseg-kernels`, or `pip install .` in a source checkout). "
            "Python started in the checkout's root imports the source tree, which has no "
            "_C, instead of the installed package: run from another directory, use the "
            "`unseg` command, or install with `pip install -e .`."
        ) from err
    return _C
