"""Batched Lloyd k-means and k-means++ seeding (SPEC section 5): validation, then the native
CPU (C++) or CUDA kernels.

Python prepares what both twins share: float32 points (L2-normalised for ``metric="cosine"``)
and every random draw. The draws come from a CPU
``torch.Generator`` seeded with ``seed``, so one seed picks the same initial points on every
device.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from unseg_kernels import _alloc, _env, _validate
from unseg_kernels._native import native

METRICS = ("euclidean", "cosine")
INITS = ("k-means++", "random")
METRIC_CODES = {"euclidean": 0, "cosine": 1}
NORM_EPS = 1e-10


class KMeansResult(NamedTuple):
    """What :func:`kmeans` returns; leading ``B`` only for batched input.

    Attributes:
        centroids: ``[K, D]`` or ``[B, K, D]`` float32 (unit rows for ``metric="cosine"``).
        labels: ``[N]`` or ``[B, N]`` int64, each point's nearest returned centroid.
        inertia: ``[]`` or ``[B]`` float64: sum of squared distances to the assigned centroid
            (euclidean) or of ``1 - cos`` (cosine).
        n_iter: ``[]`` or ``[B]`` int64: Lloyd iterations run.
    """

    centroids: torch.Tensor
    labels: torch.Tensor
    inertia: torch.Tensor
    n_iter: torch.Tensor


def _points(x: object, metric: str) -> tuple[torch.Tensor, bool]:
    """Validates ``x`` and returns it as contiguous float32 ``[B, N, D]`` (unit rows for
    cosine) and whether it came batched."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(
            f"x must be a torch.Tensor of shape [N, D] or [B, N, D], got {type(x).__name__}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() not in (2, 3):
        raise ValueError(f"x must have shape [N, D] or [B, N, D], got {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"x must be on a CPU or CUDA device, got {x.device}")
    _validate.finite("x", x)
    batched = x.dim() == 3
    xf = (x if batched else x.unsqueeze(0)).to(torch.float32).contiguous()
    if metric == "cosine":
        xf = F.normalize(xf, dim=-1, eps=NORM_EPS)
    return xf, batched


def _seed(seed: object) -> torch.Generator:
    """A CPU generator seeded with ``seed``, or from torch's global RNG when None."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    seed = _validate.integer("seed", seed, 0, 2**63 - 1)
    return torch.Generator().manual_seed(seed)


def _threads(num_threads: object) -> int:
    if num_threads is None:
        return torch.get_num_threads()
    return _validate.integer("num_threads", num_threads, 1)


def _cuda_native(device: torch.device):
    C = native()
    if not hasattr(C, "kmeans_lloyd_cuda"):
        raise ValueError(
            f"x is on {device} but unseg_kernels._C was built without CUDA; "
            "reinstall on a machine with nvcc, or move x to the CPU"
        )
    return C


def _plusplus(xf: torch.Tensor, k: int, gen: torch.Generator, threads: int) -> torch.Tensor:
    """k-means++ centroids ``[B, K, D]`` for prepared points ``xf [B, N, D]``."""
    B, N, D = xf.shape
    u = torch.rand(B, k, generator=gen, dtype=torch.float64).to(xf.device)
    out = _alloc.empty((B, k, D), torch.float32, xf.device)
    if xf.device.type == "cpu":
        native().kmeans_plusplus_cpu(
            xf.data_ptr(), B, N, D, k, u.data_ptr(), out.data_ptr(), threads, _env.cpu_isa()
        )
        return out
    C = _cuda_native(xf.device)
    with torch.cuda.device(xf.device):
        ws = torch.empty(
            C.kmeans_plusplus_cuda_workspace_bytes(B, N, D, k), dtype=torch.uint8, device=xf.device
        )
        stream = torch.cuda.current_stream(xf.device).cuda_stream
        C.kmeans_plusplus_cuda(
            xf.data_ptr(), B, N, D, k, u.data_ptr(), out.data_ptr(), ws.data_ptr(), stream
        )
    return out


def _initial_centroids(
    xf: torch.Tensor, k: int, init: object, metric: str, batched: bool, gen: torch.Generator,
    threads: int,
) -> torch.Tensor:  # fmt: skip
    """Initial centroids ``[B, K, D]`` float32, contiguous, a fresh tensor."""
    B, N, D = xf.shape
    if isinstance(init, torch.Tensor):
        shapes = f"[{k}, {D}]" + (f" or [{B}, {k}, {D}]" if batched else "")
        if not init.is_floating_point():
            raise TypeError(f"init must be a floating-point tensor, got dtype {init.dtype}")
        if tuple(init.shape) != (k, D) and not (batched and tuple(init.shape) == (B, k, D)):
            raise ValueError(f"init must have shape {shapes} (k, D of x), got {tuple(init.shape)}")
        if init.device != xf.device:
            raise ValueError(f"init is on {init.device} but x is on {xf.device}")
        _validate.finite("init", init)
        # A fresh contiguous copy: the native code updates the centroids in place.
        c = init.to(torch.float32).expand(B, k, D).clone(memory_format=torch.contiguous_format)
        return F.normalize(c, dim=-1, eps=NORM_EPS) if metric == "cosine" else c
    _validate.choice("init", init, INITS)
    if init == "random":
        # K distinct points per problem, uniformly: the K largest of N uniform keys.
        idx = torch.rand(B, N, generator=gen, dtype=torch.float64).topk(k, dim=1).indices
        idx = idx.to(xf.device)
        return torch.gather(xf, 1, idx[:, :, None].expand(B, k, D)).contiguous()
    return _plusplus(xf, k, gen, threads)


def kmeans_plusplus(
    x: torch.Tensor,
    k: int,
    *,
    metric: str = "euclidean",
    seed: int | None = None,
    num_threads: int | None = None,
) -> torch.Tensor:
    """k-means++ seeding alone (SPEC section 5): the first centroid uniform over the points,
    each next one drawn with probability proportional to the squared distance to the nearest
    centroid chosen so far. Every problem of a batch is seeded in the same native call.

    Args:
        x: points ``[N, D]`` or ``[B, N, D]``, any float dtype, CPU or CUDA.
        k: centroids per problem, ``1 <= k <= N``.
        metric: "euclidean", or "cosine" (the points are L2-normalised first, so the chosen
            centroids are unit vectors).
        seed: seeds the draws (the same draws on every device); None draws one from torch's
            global RNG.
        num_threads: CPU threads (default ``torch.get_num_threads()``).

    Returns:
        ``[K, D]`` or ``[B, K, D]`` float32 centroids, each a (normalised) point of x.

    Example:
        >>> c = kmeans_plusplus(torch.randn(1000, 64), 8, seed=0)
        >>> c.shape
        torch.Size([8, 64])
    """
    metric = _validate.choice("metric", metric, METRICS)
    xf, batched = _points(x, metric)
    k = _validate.integer("k", k, 1, xf.shape[1])
    c = _plusplus(xf, k, _seed(seed), _threads(num_threads))
    return c if batched else c[0]


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    metric: str = "euclidean",
    init: str | torch.Tensor = "k-means++",
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int | None = None,
    num_threads: int | None = None,
) -> KMeansResult:
    """Lloyd k-means on one problem ``[N, D]`` or on B independent problems ``[B, N, D]`` in
    one call (SPEC section 5).

    Each iteration assigns every point to its nearest centroid and moves each centroid to the
    mean of its points. It stops when no label changes or when the sum of squared centroid
    moves is at most ``tol`` times the mean per-feature variance of that problem's points
    (scikit-learn's rule), or after ``max_iter`` iterations. An empty cluster takes the point
    farthest from its centroid. The returned labels are a final assignment to the returned
    centroids. Results are reproducible for a given seed and device, whatever the thread count.

    Computation is float32 whatever x's dtype (sums in float64); the distances use
    ``||x||^2 - 2 x.c + ||c||^2``, as scikit-learn and faiss do, and never form an N x K x D
    tensor. CPU: C++ threads with AVX2 kernels when the CPU has them. CUDA: fused distance +
    argmin + accumulation kernels, every problem of the batch in the same launches.

    Args:
        x: points ``[N, D]`` or ``[B, N, D]``, float32/float16/bfloat16/float64, CPU or CUDA.
        k: clusters per problem, ``1 <= k <= N``.
        metric: "euclidean" (squared L2) or "cosine": spherical k-means as faiss'
            ``spherical=True``: points are L2-normalised, assigned by largest dot product,
            centroids re-normalised after each update (and the tolerance uses the variance of
            the normalised points).
        init: "k-means++" (D^2 sampling), "random" (k distinct points), or initial centroids
            ``[K, D]`` (shared by every problem) or ``[B, K, D]`` (normalised for cosine).
        max_iter: most Lloyd iterations, >= 1.
        tol: relative tolerance (>= 0) of the stopping rule above; 0 stops only when no label
            changes.
        seed: seeds the initialisation (the same draws on every device); None draws one from
            torch's global RNG.
        num_threads: CPU threads (default ``torch.get_num_threads()``); ignored on CUDA.

    Returns:
        :class:`KMeansResult` ``(centroids, labels, inertia, n_iter)`` on x's device.

    Example:
        >>> codes = torch.randn(16, 784, 70)  # 16 images, 28 x 28 codes of width 70
        >>> res = kmeans(codes, 27, metric="cosine", seed=0)
        >>> res.centroids.shape, res.labels.shape, res.inertia.shape
        (torch.Size([16, 27, 70]), torch.Size([16, 784]), torch.Size([16]))
    """
    metric = _validate.choice("metric", metric, METRICS)
    xf, batched = _points(x, metric)
    B, N, D = xf.shape
    k = _validate.integer("k", k, 1, N)
    max_iter = _validate.integer("max_iter", max_iter, 1)
    tol = _validate.real("tol", tol)
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    threads = _threads(num_threads)
    gen = _seed(seed)
    centroids = _initial_centroids(xf, k, init, metric, batched, gen, threads)

    labels = torch.empty((B, N), dtype=torch.int64, device=xf.device)
    inertia = _alloc.empty((B,), torch.float64, xf.device)
    n_iter = torch.empty((B,), dtype=torch.int64, device=xf.device)
    args = (
        xf.data_ptr(), B, N, D, k, METRIC_CODES[metric], tol, max_iter,
        centroids.data_ptr(), labels.data_ptr(), inertia.data_ptr(), n_iter.data_ptr(),
    )  # fmt: skip
    if xf.device.type == "cpu":
        native().kmeans_lloyd_cpu(*args, threads, _env.cpu_isa())
    else:
        C = _cuda_native(xf.device)
        with torch.cuda.device(xf.device):
            ws = torch.empty(
                C.kmeans_lloyd_cuda_workspace_bytes(B, N, D, k), dtype=torch.uint8,
                device=xf.device,
            )  # fmt: skip
            C.kmeans_lloyd_cuda(
                *args, ws.data_ptr(), torch.cuda.current_stream(xf.device).cuda_stream
            )
    if not batched:
        return KMeansResult(centroids[0], labels[0], inertia[0], n_iter[0])
    return KMeansResult(centroids, labels, inertia, n_iter)
