"""Public functional ops: validate inputs, pick a backend, record autograd."""

from unseg_kernels.ops._pair import CD_HIST_BINS, CdStats
from unseg_kernels.ops.correlation import correlation
from unseg_kernels.ops.kmeans import KMeansResult, kmeans, kmeans_plusplus
from unseg_kernels.ops.knn import knn
from unseg_kernels.ops.stego import stego_corr_loss

__all__ = [
    "CD_HIST_BINS",
    "CdStats",
    "KMeansResult",
    "correlation",
    "kmeans",
    "kmeans_plusplus",
    "knn",
    "stego_corr_loss",
]
