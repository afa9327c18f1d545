"""Batched k-means: one large problem and a batch of per-image problems, per provider.

Providers: ``unseg`` (this package, k-means++; ``unseg_random`` starts from random points as
faiss does), ``faiss`` (faiss.Kmeans, random init, no subsampling), ``sklearn`` (KMeans, lloyd,
n_init=1, its greedy k-means++), and on CUDA ``flash`` (flash-kmeans' batch_kmeans_Euclid)
and ``faiss_gpu`` where importable. A ``_1t`` suffix runs the same on one thread: faiss'
OpenMP threads spin while they wait, so its multi-threaded times collapse when other
processes share the cores, and the one-thread pair compares the code per core. Batched cases
run the baselines in a Python loop, since neither takes a batch of independent problems. All
stop after ``ITERS`` iterations or when nothing changes (faiss stops when the objective
repeats, scikit-learn with tol=0 and this package with tol=0 when no label changes);
``extra_info["n_iter"]`` records what each ran.

Physical limits. A Lloyd iteration's assignment is a [N, D] x [D, K] product, 2*N*K*D FLOPs
that read N*D*4 bytes: 6.75 FLOP per byte at K=27, so on CPU it is compute bound. The
development machine (2 cores of an AMD EPYC, AVX2 + FMA, no AVX-512) peaks at about
99 GFLOP/s per core (two 8-wide FMA pipes at about 3.1 GHz, measured with a register-only FMA
loop) and torch's BLAS reaches 60-87 GFLOP/s per core on large square products and 35-60 on
[N, 384] x [384, 27]. ``extra_info["assign_gflops"]`` is 2*N*K*D*n_iter over the time, to set
against those. On a GPU the same iteration is near the ridge point of an H100 (3.35 TB/s HBM,
67 TFLOP/s fp32 without tensor cores): ``extra_info["gbytes_per_s"]`` reports the points' bytes
read per Lloyd iteration over the time per iteration, to set against the HBM bandwidth.

The machine is shared: ``extra_info["loadavg"]`` records the 1-minute load average at the end
of each case (2.0 means both cores were busy with other work too), and one-thread providers
also record ``extra_info["thread_cpu_s"]``, the median CPU time of the calling thread per
call, which other processes do not inflate.

Run: ``pytest benchmarks/bench_kmeans.py --benchmark-json=benchmarks/results/kmeans-cpu.json``
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np
import pytest
import torch

from unseg_kernels import kmeans
from unseg_kernels.testing import synchronize

D, K, ITERS = 384, 27, 20
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
HAS_FAISS = importlib.util.find_spec("faiss") is not None
HAS_SKLEARN = importlib.util.find_spec("sklearn") is not None
HAS_FLASH = importlib.util.find_spec("flash_kmeans") is not None
# HBM bandwidth (GB/s) of the GPUs this may run on, by name prefix.
HBM_GBS = {"NVIDIA H100 80GB HBM3": 3350, "NVIDIA H100 PCIe": 2000, "NVIDIA H200": 4800,
           "NVIDIA A100-SXM4-80GB": 2039, "NVIDIA A100-SXM4-40GB": 1555}  # fmt: skip


def points(batch: int, n: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, n, D, generator=g).to(device)


def case_kmeans(provider: str, batch: int, n: int, device: str = DEVICE):
    """A zero-argument callable clustering ``batch`` problems of ``n`` x D points into K,
    returning the mean number of iterations run."""
    x = points(batch, n, device)
    xs = x[0] if batch == 1 else x
    one_thread = provider.endswith("_1t")
    provider = provider.removesuffix("_1t")
    if provider in ("unseg", "unseg_random"):
        init = "random" if provider == "unseg_random" else "k-means++"
        threads = 1 if one_thread else None

        def run():
            res = kmeans(xs, K, init=init, max_iter=ITERS, tol=0.0, seed=0, num_threads=threads)
            synchronize(device)
            return float(res.n_iter.double().mean())

        return run
    xn = x.cpu().numpy()
    if provider in ("faiss", "faiss_gpu"):
        import faiss

        def run():
            threads = faiss.omp_get_max_threads()
            if one_thread:
                faiss.omp_set_num_threads(1)
            try:
                iters = []
                for b in range(batch):
                    km = faiss.Kmeans(D, K, niter=ITERS, seed=1, max_points_per_centroid=10**9,
                                      gpu=provider == "faiss_gpu")  # fmt: skip
                    km.train(xn[b])
                    iters.append(len(km.obj))
            finally:
                faiss.omp_set_num_threads(threads)
            return float(np.mean(iters))

        return run
    if provider == "sklearn":
        from sklearn.cluster import KMeans
        from threadpoolctl import threadpool_limits

        def run():
            iters = []
            with threadpool_limits(1 if one_thread else None):
                for b in range(batch):
                    km = KMeans(K, n_init=1, max_iter=ITERS, tol=0.0, algorithm="lloyd",
                                random_state=0).fit(xn[b])  # fmt: skip
                    iters.append(km.n_iter_)
            return float(np.mean(iters))

        return run
    if provider == "flash":
        from flash_kmeans import batch_kmeans_Euclid

        init = x[:, :K].clone()

        def run():
            _, _, n_iter = batch_kmeans_Euclid(x, K, max_iters=ITERS, tol=0.0, init_centroids=init)
            synchronize(device)
            return float(n_iter)

        return run
    raise ValueError(provider)


def _skip_unavailable(provider: str) -> None:
    if provider.startswith("faiss") and not HAS_FAISS:
        pytest.skip("faiss is not installed")
    if provider == "sklearn" and not HAS_SKLEARN:
        pytest.skip("scikit-learn is not installed")
    if provider == "flash" and not HAS_FLASH:
        pytest.skip("flash-kmeans is not installed")
    if provider == "faiss_gpu":
        import faiss

        if not hasattr(faiss, "StandardGpuResources"):
            pytest.skip("faiss has no GPU support here")


def _measure(benchmark, peak_rss_mb, provider, batch, n, rounds):
    _skip_unavailable(provider)
    case = case_kmeans(provider, batch, n)
    cpu_seconds = []

    def fn():
        # One-thread providers run on this thread: its CPU time leaves out the time other
        # processes held the core, which the wall time on a shared machine does not.
        start = time.thread_time()
        out = case()
        cpu_seconds.append(time.thread_time() - start)
        return out

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n_iter = benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
    info = benchmark.extra_info
    if provider.endswith("_1t"):
        info["thread_cpu_s"] = float(np.median(cpu_seconds[1:]))
    info.update(provider=provider, batch=batch, n=n, d=D, k=K, max_iter=ITERS, n_iter=n_iter)
    median = benchmark.stats["median"]
    info["assign_gflops"] = 2.0 * batch * n * K * D * n_iter / median / 1e9
    info["loadavg"] = os.getloadavg()[0]
    if DEVICE == "cuda":
        info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        # Points read per Lloyd iteration (plus the final assignment).
        info["gbytes_per_s"] = batch * n * D * 4 * (n_iter + 1) / median / 1e9
        name = torch.cuda.get_device_name()
        peak = next((v for key, v in HBM_GBS.items() if name.startswith(key)), None)
        if peak is not None:
            info["hbm_fraction"] = info["gbytes_per_s"] / peak
    else:
        info["peak_rss_mb"] = peak_rss_mb(
            __file__, "case_kmeans", provider=provider, batch=batch, n=n
        )


CPU_PROVIDERS = [
    "unseg", "unseg_1t", "unseg_random", "faiss", "faiss_1t", "sklearn", "sklearn_1t"
]  # fmt: skip
GPU_PROVIDERS = ["unseg", "unseg_random", "flash", "faiss_gpu"]


@pytest.mark.parametrize(
    "provider", ["unseg", "unseg_random", "unseg_random_1t", "faiss", "faiss_1t"]
)
def test_one_large_problem(benchmark, peak_rss_mb, provider):
    """One problem of 200k x 384 points, K=27 (a dataset-wide clustering of crop features)."""
    n = 1_000_000 if HAS_CUDA else 200_000
    _measure(benchmark, peak_rss_mb, provider, 1, n, 5 if HAS_CUDA else 3)


@pytest.mark.parametrize("provider", GPU_PROVIDERS if HAS_CUDA else CPU_PROVIDERS)
def test_batch_of_images(benchmark, peak_rss_mb, provider):
    """64 problems of 784 x 384 (28 x 28 ViT-S/8 tokens per image), K=27 each."""
    rounds = 2 if provider.startswith("sklearn") else 5
    _measure(benchmark, peak_rss_mb, provider, 64, 784, rounds)


@pytest.mark.skipif(not HAS_CUDA, reason="GPU case")
@pytest.mark.parametrize("provider", GPU_PROVIDERS)
def test_large_batch_gpu(benchmark, peak_rss_mb, provider):
    """1024 problems of 784 x 384: a training batch's worth of per-image clusterings."""
    _measure(benchmark, peak_rss_mb, provider, 1024, 784, 5)
