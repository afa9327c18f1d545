"""The installed package: native module, `python -m unseg_kernels info`."""

import subprocess
import sys

import torch

import unseg_kernels
from unseg_kernels._native import native


def test_native_build_info():
    info = native().build_info()
    assert info["version"] == unseg_kernels.__version__
    assert isinstance(info["with_cuda"], bool)
    if info["with_cuda"]:
        assert info["cuda_runtime_version"] >= 11000 and info["cuda_architectures"]
    count = native().cuda_device_count()
    assert count == (torch.cuda.device_count() if info["with_cuda"] else 0)


def test_info_command(tmp_path):
    # cwd away from the checkout, so the installed package is the one imported
    out = subprocess.run(
        [sys.executable, "-m", "unseg_kernels", "info"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert f"unseg_kernels {unseg_kernels.__version__}" in out
    assert f"torch         {torch.__version__}" in out
    assert "_C " in out


def test_imports_without_triton(tmp_path):
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, unseg_kernels\n"
        "from unseg_kernels import _env; _env.triton_available.cache_clear()\n"
        "assert not _env.triton_available()\n"
        "f, c = torch.randn(1, 8, 3, 3), torch.randn(1, 4, 3, 3)\n"
        "print(float(unseg_kernels.stego_corr_loss(f, f, c, c, 0.1)))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)
