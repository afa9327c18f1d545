"""Exact k-nearest neighbours of every crop feature among all of them (STEGO's neighbour
table: cosine, k = 30, self included), per provider.

Providers: ``unseg`` (this package: blocked matmul + top-k merge, bounded memory),
``faiss`` (IndexFlatIP on L2-normalised vectors, its exhaustive BLAS search), and
``torch_full`` (one N x N similarity matrix and a top-k: what the blocks avoid; only where
the matrix fits).

Physical limit: the search is a [N, D] x [D, N] product, 2*N*N*D FLOPs, compute bound. On the
development machine (2 AMD EPYC cores, AVX2 + FMA) torch's and faiss' BLAS reach 60-87 GFLOP/s
per core on large products out of about 99 peak; ``extra_info["gflops"]`` reports
2*N*N*D over the time. The top-k adds work proportional to N*N on top.

The machine is shared: ``extra_info["loadavg"]`` records the 1-minute load average at the end
of each case.

Run: ``pytest benchmarks/bench_knn.py --benchmark-json=benchmarks/results/knn-cpu.json``
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

from unseg_kernels import knn
from unseg_kernels.testing import synchronize

D, K = 384, 30
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
HAS_FAISS = importlib.util.find_spec("faiss") is not None


def features(n: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, D, generator=g).to(device)


def case_knn(provider: str, n: int, device: str = DEVICE):
    """A zero-argument callable computing the k=K cosine neighbours of n features."""
    x = features(n, device)
    if provider == "unseg":

        def run():
            out = knn(x, k=K)
            synchronize(device)
            return out

        return run
    if provider == "faiss":
        import faiss

        xn = F.normalize(x, dim=1).cpu().numpy()

        def run():
            index = faiss.IndexFlatIP(D)
            index.add(xn)
            return index.search(xn, K)

        return run
    if provider == "torch_full":

        def run():
            xn = F.normalize(x, dim=1)
            out = (xn @ xn.T).topk(K, dim=1)
            synchronize(device)
            return out

        return run
    raise ValueError(provider)


@pytest.mark.parametrize("n", [20_000, 100_000])
@pytest.mark.parametrize("provider", ["unseg", "faiss", "torch_full"])
def test_self_knn(benchmark, peak_rss_mb, provider, n):
    if provider == "faiss" and (not HAS_FAISS or HAS_CUDA):
        pytest.skip("faiss-cpu is the CPU baseline")
    if provider == "torch_full" and n * n * 4 > 4 * 2**30:
        pytest.skip(f"the {n} x {n} matrix needs {n * n * 4 / 2**30:.0f} GiB")
    fn = case_knn(provider, n)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(fn, rounds=1 if n > 50_000 and DEVICE == "cpu" else 3, warmup_rounds=0)
    info = benchmark.extra_info
    info.update(provider=provider, n=n, d=D, k=K)
    info["gflops"] = 2.0 * n * n * D / benchmark.stats["median"] / 1e9
    info["loadavg"] = os.getloadavg()[0]
    if DEVICE == "cuda":
        info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        info["peak_rss_mb"] = peak_rss_mb(__file__, "case_knn", provider=provider, n=n)
