"""The embedded demo dataset: real textures from scikit-image, exact labels, determinism."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unseg_kernels.testing import assert_close
from unseg_kernels.train import demo
from unseg_kernels.train.backbone import build_backbone
from unseg_kernels.train.demo import DEMO_TEXTURES, FilterBankBackbone, TextureMosaics, make_mosaic
from unseg_kernels.train.transforms import normalize

SIZE = 32
STANDARDISED = 1e-5  # features have zero mean over channels at every position
INVARIANT = 1e-4  # a brightness offset changes only float rounding
CONTRAST = 0.1  # doubling the contrast moves features only through LOG_EPS
DEMO_MARGIN = 2.0  # mIoU points; measured margins are 5.7 to 8.4 over seeds 0-2


@pytest.fixture(scope="module")
def mosaics():
    return TextureMosaics(6, size=SIZE, seed=0)


def test_shapes_classes_and_sample(mosaics):
    assert mosaics.images.shape == (6, SIZE, SIZE, 3) and mosaics.images.dtype == np.uint8
    assert mosaics.labels.shape == (6, SIZE, SIZE) and mosaics.labels.dtype == np.int64
    assert mosaics.n_classes == len(DEMO_TEXTURES) == len(mosaics.class_names)
    sample = mosaics[2]
    assert sample["img"].shape == (3, SIZE, SIZE) and sample["img"].dtype == torch.float32
    assert torch.equal(sample["label"], torch.from_numpy(mosaics.labels[2]))
    for labels in mosaics.labels:
        assert len(np.unique(labels)) >= 2  # every mosaic shows at least two textures
        assert labels.min() >= 0 and labels.max() < mosaics.n_classes


def test_deterministic_for_a_seed(mosaics):
    again = TextureMosaics(6, size=SIZE, seed=0)
    assert np.array_equal(again.images, mosaics.images)
    assert np.array_equal(again.labels, mosaics.labels)
    other = TextureMosaics(6, size=SIZE, seed=1)
    assert not np.array_equal(other.labels, mosaics.labels)
    val = TextureMosaics(6, size=SIZE, seed=0, split="val")
    assert not np.array_equal(val.images, mosaics.images)


def test_labels_are_exact(monkeypatch):
    # Sources of constant value v_c, patches passed through unnormalised, no brightness,
    # contrast or tint change: every pixel must then show exactly its label's v_c.
    monkeypatch.setattr(
        demo, "_texture_patch", lambda src, size, rng: np.full((size, size), src[0, 0])
    )
    monkeypatch.setattr(demo, "MEAN_RANGE", (0.0, 0.0))
    monkeypatch.setattr(demo, "STD_RANGE", (1.0, 1.0))
    monkeypatch.setattr(demo, "TINT", 0.0)
    values = np.array([0.2, 0.4, 0.6, 0.8], np.float32)
    sources = [np.full((64, 64), v, np.float32) for v in values]
    rng = np.random.default_rng(0)
    for _ in range(5):
        img, labels = make_mosaic(sources, 24, rng, regions=(2, 4))
        expected = (values[labels] * 255 + 0.5).astype(np.uint8)
        assert np.array_equal(img[..., 0], expected) and np.array_equal(img[..., 2], expected)
        assert len(np.unique(labels)) >= 2


def test_intensity_does_not_reveal_the_class():
    mosaics = TextureMosaics(48, size=SIZE, seed=0)  # enough regions for stable means
    means = [[], [], [], []]
    for img, labels in zip(mosaics.images, mosaics.labels, strict=True):
        gray = img.mean(2)
        for c in np.unique(labels):
            means[c].append(gray[labels == c].mean())
    overall = [np.mean(m) for m in means if m]
    assert max(overall) - min(overall) < 40  # of 255: brightness is randomised per region


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        TextureMosaics(2, split="test")
    with pytest.raises(ValueError, match="n_images must be a positive int"):
        TextureMosaics(0)
    with pytest.raises(ValueError, match="size must be in"):
        TextureMosaics(2, size=8)


def test_filter_bank_backbone_shape_and_invariances():
    fb = FilterBankBackbone()
    assert (fb.patch_size, fb.embed_dim) == (8, 24)
    assert list(fb.parameters()) == []  # fixed: nothing to train or download
    gray = torch.rand(2, 1, 40, 56) * 0.5 + 0.25
    images = normalize(gray.expand(-1, 3, -1, -1))
    feats = fb(images)
    assert feats.shape == (2, 24, 5, 7)
    assert feats.mean(1).abs().max() < STANDARDISED
    brighter = fb(normalize((gray + 0.2).expand(-1, 3, -1, -1)))
    assert_close(brighter, feats, INVARIANT)  # zero-mean kernels ignore brightness
    # Doubled contrast: each energy doubles (plus LOG_EPS), so log + standardise nearly cancel.
    contrast = fb(normalize((0.5 + 2 * (gray - 0.5)).expand(-1, 3, -1, -1)))
    assert_close(contrast, feats, CONTRAST)


def test_filter_bank_separates_textures_of_one_mosaic(mosaics):
    # Tokens of the same texture are more alike than tokens of different textures.
    fb = FilterBankBackbone()
    feats = fb(torch.stack([mosaics[i]["img"] for i in range(len(mosaics))]))  # [6, 24, 4, 4]
    labels = torch.from_numpy(mosaics.labels[:, 4::8, 4::8])  # the class at each token centre
    x = torch.nn.functional.normalize(feats.permute(0, 2, 3, 1).reshape(-1, 24), dim=1)
    y = labels.reshape(-1)
    sim = x @ x.T
    same = y[:, None] == y[None, :]
    assert sim[same].mean() > sim[~same].mean()


def test_filter_bank_bad_input():
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        FilterBankBackbone()(torch.zeros(1, 3, 20, 16))
    with pytest.raises(ValueError, match=r"pool must be >= patch_size"):
        FilterBankBackbone(pool=4)
    with pytest.raises(ValueError, match="takes no weights"):
        build_backbone("filterbank", weights="w.safetensors")
    assert isinstance(build_backbone("filterbank"), FilterBankBackbone)


def test_demo_command_beats_its_baseline(tmp_path, capsys):
    # The README's main job with its default settings: the trained probe must beat k-means
    # on the raw features, and the run must leave its metrics, grid and run files.
    from unseg_kernels.cli import main

    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["cluster_miou"] > metrics["baseline_miou"] + DEMO_MARGIN
    for key in ("crf_miou", "crf_accuracy", "cluster_accuracy", "baseline_accuracy"):
        assert 0 <= metrics[key] <= 100
    assert metrics["seconds"] > 0 and metrics["peak_memory_mb"] > 0
    assert (tmp_path / "predictions.png").is_file() and (tmp_path / "run" / "last.pt").is_file()
    assert "trained cluster probe" in capsys.readouterr().out
    assert main(["demo", "--out", str(tmp_path), "--device", "cpu"]) == 1  # never overwrites
