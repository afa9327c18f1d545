"""Public functional ops: validate inputs, pick a backend, record autograd."""

from unseg_kernels.ops._pair import CD_HIST_BINS, CdStats
from unseg_kernels.ops.correlation import correlation
from unseg_kernels.ops.crf import dense_crf, dense_crf_from_logits
from unseg_kernels.ops.kmeans import KMeansResult, kmeans, kmeans_plusplus
from unseg_kernels.ops.knn import knn
from unseg_kernels.ops.smooseg import smooseg_smooth_loss
from unseg_kernels.ops.stego import stego_corr_loss

__all__ = [
    "CD_HIST_BINS",
    "CdStats",
    "KMeansResult",
    "correlation",
    "dense_crf",
    "dense_crf_from_logits",
    "kmeans",
    "kmeans_plusplus",
    "knn",
    "smooseg_smooth_loss",
    "stego_corr_loss",
]
