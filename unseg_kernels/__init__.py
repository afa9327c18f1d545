"""unseg-kernels: fused kernels for unsupervised semantic segmentation.

Functional ops live at the top level, loss modules in :mod:`unseg_kernels.nn`.
"""

from unseg_kernels.ops import (
    CD_HIST_BINS,
    CdStats,
    KMeansResult,
    correlation,
    dense_crf,
    dense_crf_from_logits,
    kmeans,
    kmeans_plusplus,
    knn,
    smooseg_smooth_loss,
    stego_corr_loss,
)

__version__ = "0.1.0"

__all__ = [
    "CD_HIST_BINS",
    "CdStats",
    "KMeansResult",
    "__version__",
    "correlation",
    "dense_crf",
    "dense_crf_from_logits",
    "kmeans",
    "kmeans_plusplus",
    "knn",
    "smooseg_smooth_loss",
    "stego_corr_loss",
]
