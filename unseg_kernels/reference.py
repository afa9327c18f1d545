"""Naive PyTorch references: the test oracle, written for reading, not for speed.

Each function materialises everything, exactly as the original STEGO code does (SPEC
sections 1-2), or runs the plain textbook loop (k-means and k-nearest neighbours, section 5).
Tests, benchmarks and the ``backend="reference"`` path all use this single copy; nothing else
in the package should re-type these formulas. The dense CRF reference (SPEC section 4) is
pydensecrf itself, wrapped here as STEGO calls it.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

NORM_EPS = 1e-10


def norm(t: torch.Tensor) -> torch.Tensor:
    """L2-normalises over the channel axis (dim 1) with eps 1e-10, as STEGO's ``norm``."""
    return F.normalize(t, dim=1, eps=NORM_EPS)


def correlation(a: torch.Tensor, b: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``[B, C, H, W] x [B, C, I, J] -> [B, H, W, I, J]``, STEGO's ``tensor_correlation``."""
    if normalize:
        a, b = norm(a), norm(b)
    return torch.einsum("nchw,ncij->nhwij", a, b)


def feature_correlation(f1: torch.Tensor, f2: torch.Tensor, pointwise: bool = True) -> torch.Tensor:
    """The no-gradient feature correlation ``fd`` with STEGO's pointwise centering (step 3)."""
    with torch.no_grad():
        fd = correlation(f1, f2)
        if pointwise:
            old_mean = fd.mean()
            fd = fd - fd.mean([3, 4], keepdim=True)
            fd = fd - fd.mean() + old_mean
    return fd


def stego_corr_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    c1: torch.Tensor,
    c2: torch.Tensor,
    shift: float,
    *,
    pointwise: bool = True,
    zero_clamp: bool = True,
    stabilize: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One STEGO pair term (SPEC section 2), materialised.

    Returns:
        ``(loss, cd)``: the mean of the elementwise loss, and the code correlation
        ``cd`` ``[B, H, W, I, J]`` that STEGO logs as a histogram.
    """
    fd = feature_correlation(f1, f2, pointwise)
    cd = correlation(c1, c2)
    min_val = 0.0 if zero_clamp else -9999.0
    clamped = cd.clamp(min_val, 0.8) if stabilize else cd.clamp(min_val)
    loss = -clamped * (fd - shift)
    return loss.mean(), cd


def smooseg_smooth_loss(
    f1: torch.Tensor,
    f2: torch.Tensor,
    a1: torch.Tensor,
    a2: torch.Tensor,
    shift: float,
    *,
    pointwise: bool = True,
) -> torch.Tensor:
    """One SmooSeg smoothness pair term (SPEC section 3), materialised:
    ``mean((W - shift) * (1 - norm(a1) . norm(a2)))``."""
    w = feature_correlation(f1, f2, pointwise)
    similarity = correlation(a1, a2)
    return ((w - shift) * (1 - similarity)).mean()


def dense_crf_pydensecrf(
    image: torch.Tensor,
    probs: torch.Tensor,
    *,
    iters: int = 10,
    pos_w: float = 3.0,
    pos_xy_std: float = 1.0,
    bi_w: float = 4.0,
    bi_xy_std: float = 67.0,
    bi_rgb_std: float = 3.0,
) -> torch.Tensor:
    """The dense CRF of SPEC section 4 computed by pydensecrf (the ``pydensecrf2`` package),
    called exactly as STEGO calls it, for one image: the reference of ``dense_crf``.

    Args:
        image: uint8 RGB ``[H, W, 3]`` (channels used in the order given).
        probs: class probabilities ``[C, H, W]``.

    Returns:
        Q ``[C, H, W]`` float32 on the CPU.
    """
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as err:
        raise ImportError(
            "the dense CRF reference needs pydensecrf: pip install pydensecrf2 "
            "(part of unseg-kernels[test])"
        ) from err
    img = np.ascontiguousarray(image.cpu().numpy(), dtype=np.uint8)
    p = probs.detach().cpu().to(torch.float32).numpy()
    C, H, W = p.shape
    crf = dcrf.DenseCRF2D(W, H, C)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(p)))
    crf.addPairwiseGaussian(sxy=pos_xy_std, compat=pos_w)
    crf.addPairwiseBilateral(sxy=bi_xy_std, srgb=bi_rgb_std, rgbim=img, compat=bi_w)
    q = np.array(crf.inference(iters), dtype=np.float32).reshape(C, H, W)
    return torch.from_numpy(q)


def _point_distances(x: torch.Tensor, c: torch.Tensor, metric: str) -> torch.Tensor:
    """``[N, D] x [K, D] -> [N, K]``: squared L2 distances, or ``1 - x.c`` for "cosine"."""
    if metric == "cosine":
        return 1.0 - x @ c.T
    return ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)


def kmeans_lloyd(
    x: torch.Tensor,
    init: torch.Tensor,
    *,
    metric: str = "euclidean",
    max_iter: int = 300,
    tol: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Lloyd k-means on one problem in float64 with an ``[N, K]`` distance matrix (SPEC
    section 5), with the same rules as :func:`unseg_kernels.kmeans`.

    Args:
        x: points ``[N, D]``.
        init: initial centroids ``[K, D]``.
        metric: "euclidean" or "cosine" (points and centroids L2-normalised, centroids
            re-normalised after each update).
        max_iter: most iterations.
        tol: stop when the squared centroid shift is at most ``tol`` times the mean
            per-feature variance of the points.

    Returns:
        ``(centroids [K, D], labels [N], inertia, n_iter)``, labels being the assignment to
        the returned centroids.
    """
    x, c = x.double(), init.double().clone()
    if metric == "cosine":
        x, c = norm(x), norm(c)
    K = c.shape[0]
    tol_abs = tol * x.var(dim=0, correction=0).mean() if tol > 0 else 0.0
    labels = torch.full((x.shape[0],), -1, dtype=torch.long)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is returned)
        best, new_labels = _point_distances(x, c, metric).min(dim=1)  # ties: lowest index
        changes = int((new_labels != labels).sum())
        labels = new_labels
        counts = torch.bincount(labels, minlength=K)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        empty = torch.nonzero(counts == 0).flatten().tolist()
        if empty:
            # Farthest points first (distance descending, index ascending), one per empty
            # cluster in index order; each leaves its own cluster's sum.
            far = torch.sort(best, descending=True, stable=True).indices[: len(empty)]
            for e, p in zip(empty, far.tolist(), strict=True):
                sums[labels[p]] -= x[p]
                counts[labels[p]] -= 1
                sums[e] = x[p]
                counts[e] = 1
        new_c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        if metric == "cosine":
            new_c = torch.where(counts[:, None] > 0, norm(new_c), c)
        shift = float(((new_c - c) ** 2).sum())
        c = new_c
        if changes == 0 or shift <= tol_abs:
            break
    dist = _point_distances(x, c, metric)
    labels = dist.argmin(dim=1)
    if metric == "cosine":
        inertia = (1.0 - (x * c[labels]).sum(1)).sum()
    else:
        inertia = ((x - c[labels]) ** 2).sum()
    return c, labels, inertia, n_iter


def knn(
    queries: torch.Tensor,
    keys: torch.Tensor | None = None,
    k: int = 30,
    *,
    metric: str = "cosine",
    exclude_self: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force k nearest neighbours in float64 with the full ``[N, M]`` matrix.

    Returns ``(values [N, k], indices [N, k])``: cosine similarities in descending order, or
    squared L2 distances in ascending order. ``exclude_self`` (only with ``keys=None``)
    leaves each query's own index out.
    """
    q = queries.double()
    kk = q if keys is None else keys.double()
    if metric == "cosine":
        scores = norm(q) @ norm(kk).T
    else:
        scores = ((q[:, None, :] - kk[None, :, :]) ** 2).sum(-1)
    if exclude_self:
        fill = float("-inf") if metric == "cosine" else float("inf")
        scores.fill_diagonal_(fill)
    return scores.topk(k, dim=1, largest=metric == "cosine")
