"""Unsupervised segmentation metrics (SPEC section 6): a confusion matrix accumulated over a
whole dataset, one global Hungarian matching of clusters to classes, IoU / mIoU and pixel
accuracy (both x100).

Extra clusters (more clusters K than classes n) are handled two ways:

- ``"drop"`` (STEGO): pixels predicted as a cluster id >= n are dropped before anything is
  counted. Pixels of clusters the matching leaves unassigned form one "extra" prediction
  class that counts as wrong; when it has pixels its IoU (0) enters the mean, as upstream.
- ``"majority"``: nothing is dropped; clusters the matching leaves unassigned are mapped
  to the class they overlap most (majority vote), so every pixel counts.

Example:
    >>> cm = ConfusionMatrix(n_clusters=27, n_classes=27)
    >>> cm.update(preds, labels)  # any shapes, labels outside [0, 27) ignored
    >>> scores = segmentation_scores(cm.matrix)
    >>> scores.miou, scores.accuracy
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from unseg_kernels.train.names import EXTRA_CLUSTER_MODES


def confusion_matrix(
    preds: torch.Tensor, labels: torch.Tensor, n_clusters: int, n_classes: int
) -> torch.Tensor:
    """Counts ``[n_clusters, n_classes]`` (int64): entry (k, c) is the number of pixels
    predicted k whose label is c. Pixels labelled outside ``[0, n_classes)`` are ignored.

    Args:
        preds: integer predictions in ``[0, n_clusters)``, any shape.
        labels: integer labels, the same shape.
    """
    if preds.shape != labels.shape:
        raise ValueError(
            f"preds and labels must have the same shape, got {tuple(preds.shape)} and "
            f"{tuple(labels.shape)}"
        )
    for name, t in (("preds", preds), ("labels", labels)):
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    preds, labels = preds.reshape(-1).long(), labels.reshape(-1).long().to(preds.device)
    valid = (labels >= 0) & (labels < n_classes)
    preds, labels = preds[valid], labels[valid]
    if preds.numel() and (preds.min() < 0 or preds.max() >= n_clusters):
        raise ValueError(
            f"preds must be in [0, {n_clusters}), got values in "
            f"[{int(preds.min())}, {int(preds.max())}]"
        )
    flat = torch.bincount(preds * n_classes + labels, minlength=n_clusters * n_classes)
    return flat.view(n_clusters, n_classes)


class ConfusionMatrix:
    """Accumulates :func:`confusion_matrix` over batches (on the predictions' device).

    Example:
        >>> cm = ConfusionMatrix(3, 3)
        >>> cm.update(torch.tensor([0, 1]), torch.tensor([2, 0]))
        >>> cm.matrix  # [[0, 0, 1], [1, 0, 0], [0, 0, 0]]
    """

    def __init__(self, n_clusters: int, n_classes: int) -> None:
        for arg, value in (("n_clusters", n_clusters), ("n_classes", n_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        self.n_clusters, self.n_classes = n_clusters, n_classes
        self.matrix = torch.zeros(n_clusters, n_classes, dtype=torch.int64)

    def update(self, preds: torch.Tensor, labels: torch.Tensor) -> None:
        counts = confusion_matrix(preds, labels, self.n_clusters, self.n_classes)
        self.matrix = self.matrix.to(counts.device) + counts


class SegmentationScores(NamedTuple):
    """Scores of one evaluation.

    Attributes:
        miou: mean IoU over classes whose IoU is defined (x100).
        accuracy: pixel accuracy (x100).
        iou: per-class IoU ``[n_classes]`` (x100, NaN when a class is absent and never
            predicted).
        cluster_to_class: ``[n_clusters]`` int64, the class each cluster is mapped to, -1
            for clusters whose pixels count as wrong (dropped or unassigned).
        matched: ``[n_classes + 1, n_classes]`` confusion after mapping (last row: pixels of
            clusters mapped to no class).
    """

    miou: float
    accuracy: float
    iou: torch.Tensor
    cluster_to_class: torch.Tensor
    matched: torch.Tensor


def hungarian(confusion: torch.Tensor) -> torch.Tensor:
    """One global matching of clusters to classes maximising the matched pixel count
    (``scipy.optimize.linear_sum_assignment``). Returns ``[n_clusters]`` int64, the class of
    each cluster or -1 for clusters left unassigned (when there are more clusters than
    classes)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(confusion.detach().cpu().double().numpy(), maximize=True)
    mapping = torch.full((confusion.shape[0],), -1, dtype=torch.int64)
    mapping[torch.from_numpy(rows)] = torch.from_numpy(cols)
    return mapping


def segmentation_scores(
    confusion: torch.Tensor, *, extra_clusters: str = "drop", match: bool = True
) -> SegmentationScores:
    """mIoU and accuracy of a cluster/class confusion matrix.

    Args:
        confusion: ``[n_clusters, n_classes]`` counts (see :class:`ConfusionMatrix`).
        extra_clusters: ``"drop"`` (STEGO) or ``"majority"``; see the module docstring.
        match: Hungarian-match clusters to classes (cluster probe); False maps cluster i to
            class i (linear probe) and needs ``n_clusters == n_classes``.

    Example:
        >>> segmentation_scores(torch.tensor([[0, 5], [7, 0]])).miou  # 100.0 (permuted)
    """
    if confusion.dim() != 2:
        raise ValueError(f"confusion must be [n_clusters, n_classes], got {tuple(confusion.shape)}")
    if extra_clusters not in EXTRA_CLUSTER_MODES:
        raise ValueError(
            f"extra_clusters must be one of {EXTRA_CLUSTER_MODES}, got {extra_clusters!r}"
        )
    conf = confusion.detach().cpu().to(torch.int64)
    n_clusters, n_classes = conf.shape
    if not match:
        if n_clusters != n_classes:
            raise ValueError(f"match=False needs n_clusters == n_classes, got {tuple(conf.shape)}")
        mapping = torch.arange(n_classes)
    elif extra_clusters == "drop":
        conf = conf.clone()
        conf[n_classes:] = 0  # STEGO drops pixels predicted as an extra cluster id
        mapping = hungarian(conf)
    else:
        mapping = hungarian(conf)
        unassigned = mapping < 0
        mapping[unassigned] = conf[unassigned].argmax(1)  # majority vote

    matched = torch.zeros(n_classes + 1, n_classes, dtype=torch.int64)
    matched.index_add_(0, torch.where(mapping >= 0, mapping, n_classes), conf)
    tp = matched.diagonal().double()
    predicted = matched[:n_classes].sum(1).double()
    actual = matched.sum(0).double()
    iou = tp / (predicted + actual - tp)  # NaN for 0/0: absent and never predicted
    ious = iou[~iou.isnan()]
    if matched[n_classes].sum() > 0:  # the "extra" prediction class: IoU 0, as STEGO
        ious = torch.cat([ious, ious.new_zeros(1)])
    total = matched.sum().item()
    miou = 100 * ious.mean().item() if ious.numel() else float("nan")
    accuracy = 100 * tp.sum().item() / total if total else float("nan")
    return SegmentationScores(miou, accuracy, 100 * iou, mapping, matched)


def map_clusters(preds: torch.Tensor, cluster_to_class: torch.Tensor) -> torch.Tensor:
    """Cluster ids -> class ids through a matching (-1 where the cluster maps to none)."""
    return cluster_to_class.to(preds.device)[preds.long()]
