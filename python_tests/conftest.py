"""Test configuration: on a machine without a CUDA device the Triton kernels run through
Triton's interpreter; kernel outputs are NaN-poisoned so an unwritten tile fails; Triton
autotuning is off (correctness needs no tuning, and every test shape would recompile)."""

import os

import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("UNSEG_POISON_ALLOC", "1")
os.environ.setdefault("UNSEG_AUTOTUNE", "0")

import pytest  # noqa: E402

from unseg_kernels import _env  # noqa: E402
from unseg_kernels._native import native  # noqa: E402

native()  # fail the whole session at once if the extension is not installed

# Devices the Triton kernels can run on in this session.
TRITON_DEVICE = "cuda" if HAS_CUDA else ("cpu" if _env.triton_interpreter() else None)


@pytest.fixture
def triton_device() -> str:
    if not _env.triton_available():
        pytest.skip("triton is not installed")
    if TRITON_DEVICE is None:
        pytest.skip("no CUDA device and TRITON_INTERPRET is not 1")
    return TRITON_DEVICE


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
