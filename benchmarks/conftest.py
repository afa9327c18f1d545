"""Shared benchmark harness (pytest-benchmark).

Run from the repository root, for example:

    pytest benchmarks/bench_stego.py --benchmark-json=benchmarks/results/stego-cpu.json

Every results file carries pytest-benchmark's machine and git commit information, plus the
versions and devices added below. Peak memory goes into each benchmark's ``extra_info``:
CUDA peaks from the caching allocator, CPU peaks as the peak RSS of a fresh process that
runs the case once (``peak_rss_mb``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent


def pytest_benchmark_update_machine_info(config, machine_info):
    from unseg_kernels import __version__
    from unseg_kernels._native import native

    machine_info["unseg_kernels"] = __version__
    machine_info["unseg_build"] = native().build_info()
    machine_info["torch"] = torch.__version__
    machine_info["torch_threads"] = torch.get_num_threads()
    try:
        import triton

        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None
    machine_info["cuda_devices"] = [
        torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())
    ]
    machine_info["cpu_count"] = os.cpu_count()


@pytest.fixture
def peak_rss_mb():
    """``peak_rss_mb(bench_file, case, **params)``: peak RSS in MiB of a new process that
    imports ``bench_file``, builds ``case(**params)`` (a zero-argument callable) and calls
    it once. Includes the interpreter and torch (about 300 MiB)."""

    def measure(bench_file: str, case: str, **params) -> float:
        cmd = [sys.executable, str(HERE / "_peak_rss.py"), bench_file, case, json.dumps(params)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    return measure
