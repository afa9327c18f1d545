"""The ``unseg`` command (also ``python -m unseg_kernels``); see :mod:`unseg_kernels.cli`."""

from __future__ import annotations

import sys

from unseg_kernels.cli import info, main

__all__ = ["info", "main"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m unseg_kernels"))
