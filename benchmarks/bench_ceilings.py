"""The machine's two ceilings, measured the way the kernels are: a large copy (memory
bandwidth, bytes read + written per second) and a large dense matmul (FLOP/s: bf16 tensor
cores on CUDA, float32 on CPU). Every kernel's benchmark is read against these.

Run: ``pytest benchmarks/bench_ceilings.py
--benchmark-json=benchmarks/results/ceilings-<device>.json``
"""

from __future__ import annotations

import pytest
import torch

from unseg_kernels.testing import synchronize

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("provider", ["torch"])
def test_copy(benchmark, provider):
    n = (1 << 30 if DEVICE == "cuda" else 1 << 27) // 4  # 1 GiB on a GPU, 128 MiB on CPU
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)

    def run():
        dst.copy_(src)
        synchronize(DEVICE)

    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    benchmark.extra_info.update(provider=provider, bytes=2 * src.numel() * 4)
    benchmark.extra_info["gb_per_s"] = 2 * src.numel() * 4 / benchmark.stats["median"] / 1e9


@pytest.mark.parametrize("provider", ["torch"])
def test_matmul(benchmark, provider):
    n, dtype = (8192, torch.bfloat16) if DEVICE == "cuda" else (2048, torch.float32)
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)

    def run():
        torch.mm(a, b)
        synchronize(DEVICE)

    benchmark.pedantic(run, rounds=10, warmup_rounds=3)
    benchmark.extra_info.update(provider=provider, n=n, dtype=str(dtype))
    benchmark.extra_info["tflops"] = 2 * n**3 / benchmark.stats["median"] / 1e12
