"""Unsupervised segmentation metrics on hand-made confusion matrices (SPEC section 6)."""

from __future__ import annotations

import math

import pytest
import torch

from unseg_kernels.train.metrics import (
    ConfusionMatrix,
    confusion_matrix,
    hungarian,
    map_clusters,
    segmentation_scores,
)

EXACT = 1e-9  # scores are ratios of integer counts computed in float64


def test_confusion_matrix_counts_and_ignores():
    preds = torch.tensor([[0, 1, 2], [2, 2, 0]])
    labels = torch.tensor([[1, 1, -1], [0, 255, 3]])  # -1, 255, 3 are outside [0, 3)
    cm = confusion_matrix(preds, labels, n_clusters=3, n_classes=3)
    assert cm.dtype == torch.int64
    assert cm.tolist() == [[0, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_accumulation_over_batches_equals_one_shot():
    g = torch.Generator().manual_seed(0)
    preds = torch.randint(0, 5, (4, 7, 9), generator=g)
    labels = torch.randint(-1, 4, (4, 7, 9), generator=g)
    acc = ConfusionMatrix(5, 4)
    for p, lab in zip(preds, labels, strict=True):
        acc.update(p, lab)
    assert torch.equal(acc.matrix, confusion_matrix(preds, labels, 5, 4))


def test_permuted_labels_score_100():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 6, (3, 20, 20), generator=g)
    perm = torch.randperm(6, generator=g)
    cm = confusion_matrix(perm[labels], labels, 6, 6)
    scores = segmentation_scores(cm)
    assert scores.miou == pytest.approx(100.0, abs=EXACT)
    assert scores.accuracy == pytest.approx(100.0, abs=EXACT)
    assert torch.equal(scores.cluster_to_class[perm], torch.arange(6))
    assert torch.equal(map_clusters(perm[labels], scores.cluster_to_class), labels)


def test_known_ious():
    # rows: predicted cluster, columns: class. Optimal matching: cluster 1 -> class 0,
    # cluster 0 -> class 1 (8 + 6 matched pixels beats 2 + 1).
    cm = torch.tensor([[2, 6], [8, 1]])
    s = segmentation_scores(cm)
    assert s.cluster_to_class.tolist() == [1, 0]
    # class 0: tp 8, predicted 9, actual 10 -> 8/11; class 1: tp 6, predicted 8, actual 7 -> 6/9
    assert s.iou.tolist() == pytest.approx([800 / 11, 600 / 9], abs=EXACT)
    assert s.miou == pytest.approx((800 / 11 + 600 / 9) / 2, abs=EXACT)
    assert s.accuracy == pytest.approx(100 * 14 / 17, abs=EXACT)


def test_absent_class_is_left_out_of_the_mean():
    cm = torch.tensor([[5, 0, 0], [0, 3, 0], [0, 0, 0]])  # class 2 absent, never predicted
    s = segmentation_scores(cm)
    assert math.isnan(s.iou[2].item())
    assert s.miou == pytest.approx(100.0, abs=EXACT)


def test_linear_probe_scores_without_matching():
    cm = torch.tensor([[2, 6], [8, 1]])
    s = segmentation_scores(cm, match=False)
    assert s.accuracy == pytest.approx(100 * 3 / 17, abs=EXACT)
    with pytest.raises(ValueError, match="n_clusters == n_classes"):
        segmentation_scores(torch.zeros(3, 2, dtype=torch.long), match=False)


def test_extra_clusters_dropped_as_stego():
    # 3 clusters, 2 classes: cluster 2 is an extra id, its pixels are dropped.
    cm = torch.tensor([[9, 1], [0, 7], [4, 4]])
    s = segmentation_scores(cm, extra_clusters="drop")
    assert s.cluster_to_class.tolist() == [0, 1, -1]
    assert s.accuracy == pytest.approx(100 * 16 / 17, abs=EXACT)
    assert s.iou.tolist() == pytest.approx([90.0, 700 / 8], abs=EXACT)


def test_wrongly_predicted_pixels_enter_the_mean_as_stego():
    # Class 1 never appears, yet cluster 1 predicts 3 pixels. The matching ties: class 1 gets
    # cluster 1 (IoU 0) or the empty cluster 2 (class 1's IoU is then NaN and cluster 1's
    # pixels form STEGO's "extra" class, IoU 0). Both give the same scores.
    cm = torch.tensor([[5, 0], [3, 0], [0, 0]])
    s = segmentation_scores(cm, extra_clusters="drop")
    assert s.accuracy == pytest.approx(100 * 5 / 8, abs=EXACT)
    assert s.iou[0].item() == pytest.approx(100 * 5 / 8, abs=EXACT)
    assert s.miou == pytest.approx(100 * 5 / 8 / 2, abs=EXACT)


def test_majority_vote_maps_extra_clusters():
    cm = torch.tensor([[9, 1], [0, 7], [4, 1]])
    s = segmentation_scores(cm, extra_clusters="majority")
    assert s.cluster_to_class.tolist() == [0, 1, 0]
    # class 0: tp 13, predicted 15, actual 13 -> 13/15; class 1: tp 7, predicted 7, actual 9
    assert s.accuracy == pytest.approx(100 * 20 / 22, abs=EXACT)
    assert s.iou.tolist() == pytest.approx([100 * 13 / 15, 100 * 7 / 9], abs=EXACT)


def test_fewer_clusters_than_classes():
    cm = torch.tensor([[4, 0, 1], [0, 3, 2]])
    s = segmentation_scores(cm)
    assert s.iou[2].item() == 0.0
    assert s.accuracy == pytest.approx(100 * 7 / 10, abs=EXACT)


def test_hungarian_is_global_not_greedy():
    # Greedy (row-wise argmax) would give cluster 0 and 1 both class 0.
    cm = torch.tensor([[10, 9], [8, 0]])
    assert hungarian(cm).tolist() == [1, 0]


def test_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2, 2)
    with pytest.raises(TypeError, match="preds must be an integer tensor"):
        confusion_matrix(torch.zeros(3), torch.zeros(3, dtype=torch.long), 2, 2)
    with pytest.raises(ValueError, match=r"preds must be in \[0, 2\)"):
        confusion_matrix(torch.tensor([0, 2]), torch.tensor([0, 1]), 2, 2)
    with pytest.raises(ValueError, match="extra_clusters must be one of"):
        segmentation_scores(torch.zeros(2, 2, dtype=torch.long), extra_clusters="vote")
    with pytest.raises(ValueError, match="n_classes must be a positive int"):
        ConfusionMatrix(3, 0)
