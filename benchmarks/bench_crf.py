"""Dense CRF: unseg_kernels.dense_crf against pydensecrf (STEGO's settings: 320x320, 27
classes, 10 mean-field iterations, lattice construction included).

Run from the repository root:

    pytest benchmarks/bench_crf.py --benchmark-json=benchmarks/results/crf-cpu.json

Cases:
- ``pydensecrf`` and ``cpu-1-thread``: one image on one thread. Timed in CPU time of the
  process (``time.process_time``), which other jobs on a shared machine disturb least; both
  run single-threaded, so it is also their latency on an idle core.
- ``interleaved-1-thread``: the two above alternately in one loop (pydensecrf, ours,
  pydensecrf, ...; process time), so that both see the same load on a shared machine;
  extra_info holds each one's median and their ratio ``speedup``. This is the figure the
  CPU target (at least 5x pydensecrf) is read from.
- ``cpu-batch16-all-threads``: 16 images with every core (``os.cpu_count()`` threads),
  wall time; ``per_image_ms`` in extra_info.
- ``cuda-batch16``: 16 images on the GPU, wall time with a device synchronisation inside
  the timed call; skipped without a CUDA device.

The machine may be shared: ``extra_info["loadavg"]`` records the 1-minute load average at the
end of each case. extra_info also has ``lattice_bytes_per_image`` (both lattices of the CPU
path, value buffers for 27 classes included, from ``crf_lattice_stats`` on the benchmark
image), the vertex counts, ``cuda_workspace_bytes_per_image`` (the worst-case device
workspace), and ``peak_rss_mb`` of a fresh process running the case once.

The GPU floor. Per image and iteration the CUDA path moves at least (N = 102400 pixels,
C = 27, vertices of the benchmark image as recorded in extra_info: 118586 Gaussian, 112649
bilateral; rows of C float32 = 108 bytes):
  zero the rows                    231k rows x 108 B                         = 25 MB
  splat: read Q twice, read+write the rows once (atomics resolve in L2)     = 22 + 50 MB
  blur: 3 + 6 axes, read and write every row per axis  (3 x 25.6 + 6 x 24.3) = 223 MB
  slice + update: rows 25, corners 7, U 11, Q 11                            = 55 MB
about 375 MB, so 3.7 GB per image for 10 iterations (lattice construction adds a few MB).
At the H100 SXM's 3.35 TB/s that is a floor of about 1.1 ms per image (1.9 ms on the
2 TB/s PCIe card), against the 5 ms per image target.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from unseg_kernels import dense_crf, reference
from unseg_kernels._native import native
from unseg_kernels.ops.crf import crf_lattice_stats
from unseg_kernels.testing import synchronize

SIZE = (320, 320)
LABELS = 27
ITERS = 10
BATCH = 16
INTERLEAVED_ROUNDS = 7
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
HAS_CUDA = torch.cuda.is_available()
needs_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf2 is not installed"
)


def _inputs(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` photographs (centre crops resized to SIZE) and smooth class probabilities as
    STEGO's evaluation produces them (coarse logits upsampled, softmax)."""
    from skimage import data

    images = []
    for b in range(batch):
        img = torch.from_numpy(getattr(data, PHOTOS[b % len(PHOTOS)])().copy())
        side = min(img.shape[:2])
        img = img[:side, :side].permute(2, 0, 1)[None].float()
        img = F.interpolate(img, size=SIZE, mode="bilinear", antialias=True, align_corners=False)
        images.append(img[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8))
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch, LABELS, SIZE[0] // 8, SIZE[1] // 8, generator=g) * 3
    probs = F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=False).softmax(1)
    return torch.stack(images).contiguous(), probs.contiguous()


def case_pydensecrf() -> Callable[[], object]:
    images, probs = _inputs(1)
    return lambda: reference.dense_crf_pydensecrf(images[0], probs[0], iters=ITERS)


def case_ours(batch: int, threads: int, device: str) -> Callable[[], object]:
    images, probs = _inputs(batch)
    images, probs = images.to(device), probs.to(device)

    def run() -> torch.Tensor:
        q = dense_crf(images, probs, iters=ITERS, num_threads=threads)
        synchronize(device)
        return q

    return run


def _record(benchmark, peak_rss_mb, case: str, images_per_call: int, **params) -> None:
    image = _inputs(1)[0][0]
    stats = crf_lattice_stats(image, LABELS)
    benchmark.extra_info.update(
        size=list(SIZE),
        labels=LABELS,
        iters=ITERS,
        images_per_call=images_per_call,
        lattice_bytes_per_image=stats["bytes"],
        pos_vertices=stats["pos_vertices"],
        bi_vertices=stats["bi_vertices"],
        cuda_workspace_bytes_per_image=native().dense_crf_cuda_workspace_bytes(1, LABELS, *SIZE),
        peak_rss_mb=peak_rss_mb(__file__, case, **params),
    )


def _per_image(benchmark, images_per_call: int) -> None:
    benchmark.extra_info["per_image_ms"] = benchmark.stats.stats.min * 1e3 / images_per_call
    benchmark.extra_info["loadavg"] = os.getloadavg()[0]


@needs_pydensecrf
@pytest.mark.benchmark(group="crf-320x320-27-one-image", timer=time.process_time)
def test_pydensecrf(benchmark, peak_rss_mb):
    benchmark.extra_info["timer"] = "process_time"
    _record(benchmark, peak_rss_mb, "case_pydensecrf", 1)
    benchmark.pedantic(case_pydensecrf(), rounds=5, warmup_rounds=1)
    _per_image(benchmark, 1)


@pytest.mark.benchmark(group="crf-320x320-27-one-image", timer=time.process_time)
def test_cpu_1_thread(benchmark, peak_rss_mb):
    benchmark.extra_info["timer"] = "process_time"
    _record(benchmark, peak_rss_mb, "case_ours", 1, batch=1, threads=1, device="cpu")
    benchmark.pedantic(case_ours(1, 1, "cpu"), rounds=10, warmup_rounds=1)
    _per_image(benchmark, 1)


@needs_pydensecrf
@pytest.mark.benchmark(group="crf-320x320-27-one-image", timer=time.process_time)
def test_interleaved_1_thread(benchmark):
    runs = {"pydensecrf": case_pydensecrf(), "ours": case_ours(1, 1, "cpu")}
    times: dict[str, list[float]] = {name: [] for name in runs}

    def one_round() -> None:
        for name, run in runs.items():
            t0 = time.process_time()
            run()
            times[name].append(time.process_time() - t0)

    benchmark.pedantic(one_round, rounds=INTERLEAVED_ROUNDS, warmup_rounds=1)
    medians = {name: statistics.median(t[-INTERLEAVED_ROUNDS:]) for name, t in times.items()}
    benchmark.extra_info.update(
        timer="process_time",
        pydensecrf_median_ms=medians["pydensecrf"] * 1e3,
        ours_median_ms=medians["ours"] * 1e3,
        speedup=medians["pydensecrf"] / medians["ours"],
        loadavg=os.getloadavg()[0],
    )


@pytest.mark.benchmark(group="crf-320x320-27-batch16")
def test_cpu_batch16_all_threads(benchmark, peak_rss_mb):
    threads = os.cpu_count() or 1
    benchmark.extra_info.update(timer="perf_counter", threads=threads)
    _record(benchmark, peak_rss_mb, "case_ours", BATCH, batch=BATCH, threads=threads, device="cpu")
    benchmark.pedantic(case_ours(BATCH, threads, "cpu"), rounds=3, warmup_rounds=1)
    _per_image(benchmark, BATCH)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.benchmark(group="crf-320x320-27-batch16")
def test_cuda_batch16(benchmark, peak_rss_mb):
    benchmark.extra_info["timer"] = "perf_counter"
    _record(benchmark, peak_rss_mb, "case_ours", BATCH, batch=BATCH, threads=1, device="cuda")
    run = case_ours(BATCH, 1, "cuda")
    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(run, rounds=20, warmup_rounds=3)
    benchmark.extra_info["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    _per_image(benchmark, BATCH)
