"""Datasets in STEGO's layouts, transforms and five-crop preprocessing, on tiny generated
directory trees."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat

from unseg_kernels.train import crop as crop_mod
from unseg_kernels.train.crop import five_crops, write_five_crops
from unseg_kernels.train.datasets import (
    Cityscapes,
    CocoStuff27,
    FolderDataset,
    Potsdam,
    build_dataset,
    cocostuff27_fine_to_coarse,
    cropped_root,
)
from unseg_kernels.train.transforms import (
    IMAGENET_MEAN,
    SegTransform,
    center_crop_box,
    five_crop_boxes,
    resize_shorter,
)

H, W = 12, 16  # odd-ish sizes so the crop boxes are not symmetric


def rgb(h=H, w=W, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save_png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def make_coco(root, fine_labels):
    """cocostuff/ with one image per split whose annotation is ``fine_labels``."""
    base = root / "cocostuff"
    for split in ("train2017", "val2017"):
        name = (
            "Coco164kFull_Stuff_Coarse.txt"
            if split == "train2017"
            else "Coco164kFull_Stuff_Coarse_7.txt"
        )
        (base / "curated" / split).mkdir(parents=True)
        (base / "curated" / split / name).write_text("000001\n")
        save_png(base / "images" / split / "000001.jpg", rgb())
        save_png(base / "annotations" / split / "000001.png", fine_labels.astype(np.uint8))


def make_cityscapes(root, label_ids, split="val"):
    base = root / "cityscapes"
    save_png(
        base / "leftImg8bit" / split / "aachen" / "aachen_000000_000019_leftImg8bit.png", rgb()
    )
    save_png(
        base / "gtFine" / split / "aachen" / "aachen_000000_000019_gtFine_labelIds.png",
        label_ids.astype(np.uint8),
    )


def make_potsdam(root, gt, *, float_image=False, with_gt=True):
    base = root / "potsdam"
    (base / "imgs").mkdir(parents=True)
    (base / "gt").mkdir()
    (base / "labelled_test.txt").write_text("tile_0\n")
    img = np.concatenate([rgb(), rgb(seed=1)[..., :1]], axis=2)  # RGB + IR
    savemat(
        base / "imgs" / "tile_0.mat", {"img": img.astype(np.float32) / 255 if float_image else img}
    )
    if with_gt:
        savemat(base / "gt" / "tile_0.mat", {"gt": gt.astype(np.uint8)})
    return img[..., :3]


def make_folder(root, labels, split="train", n=2):
    for i in range(n):
        save_png(root / "imgs" / split / f"img{i}.jpg", rgb(seed=i))
        if labels is not None:
            save_png(root / "labels" / split / f"img{i}.png", labels.astype(np.uint8))


def test_cocostuff27_maps_fine_to_coarse(tmp_path):
    table = cocostuff27_fine_to_coarse()
    assert len(table) == 182 and set(table.values()) == set(range(27))
    fine = np.random.default_rng(0).integers(0, 182, (H, W))
    fine[0, :4] = 255
    make_coco(tmp_path, fine)
    for split in ("train", "val"):
        ds = CocoStuff27(tmp_path, split)
        img, labels = ds.load(0)
        assert ds.n_classes == 27 and img.size == (W, H)
        expected = np.vectorize(lambda v: table.get(int(v), -1))(fine)
        np.testing.assert_array_equal(labels, expected)
        assert (labels[0, :4] == -1).all()
    assert len(CocoStuff27(tmp_path / "cocostuff", "train+val")) == 2  # dataset folder itself


def test_cityscapes_label_ids_minus_7(tmp_path):
    ids = np.random.default_rng(1).integers(0, 34, (H, W))
    make_cityscapes(tmp_path, ids)
    _, labels = Cityscapes(tmp_path, "val").load(0)
    np.testing.assert_array_equal(labels, np.where(ids >= 7, ids - 7, -1))


def test_cityscapes_rejects_ids_above_33(tmp_path):
    ids = np.full((H, W), 8)
    ids[3, 3] = 40
    make_cityscapes(tmp_path, ids)
    with pytest.raises(ValueError, match=r"gtFine_labelIds.png holds values outside.*\[40\]"):
        Cityscapes(tmp_path, "val").load(0)


@pytest.mark.parametrize("float_image", [False, True], ids=["uint8", "float"])
def test_potsdam_mat_tiles(tmp_path, float_image):
    gt = np.array([0, 1, 2, 3, 4, 5, 255] * 30)[: H * W].reshape(H, W)
    want_rgb = make_potsdam(tmp_path, gt, float_image=float_image)
    img, labels = Potsdam(tmp_path, "val").load(0)
    lut = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: -1}
    np.testing.assert_array_equal(labels, np.vectorize(lut.get)(gt))
    got = np.asarray(img)
    assert np.abs(got.astype(int) - want_rgb.astype(int)).max() <= 1  # float -> uint8 truncation


def test_potsdam_unlabelled_tile_is_ignored(tmp_path):
    make_potsdam(tmp_path, None, with_gt=False)
    _, labels = Potsdam(tmp_path, "val").load(0)
    assert (labels == -1).all()


def test_potsdam_rejects_unknown_ids(tmp_path):
    gt = np.zeros((H, W))
    gt[0, 0] = 7
    make_potsdam(tmp_path, gt)
    with pytest.raises(
        ValueError, match=r"tile_0.mat holds values outside the class range of 3.*\[7\]"
    ):
        Potsdam(tmp_path, "val").load(0)


def test_folder_dataset_and_transform(tmp_path):
    labels = np.random.default_rng(2).integers(0, 3, (H, W))
    labels[0, 0] = 255
    make_folder(tmp_path, labels)
    ds = build_dataset("folder", tmp_path, "train", n_classes=3, transform=SegTransform(8))
    assert len(ds) == 2
    sample = ds[1]
    assert sample["img"].shape == (3, 8, 8) and sample["img"].dtype == torch.float32
    assert sample["label"].shape == (8, 8) and sample["label"].dtype == torch.int64
    assert sample["index"] == 1
    _, raw = ds.load(0)
    assert raw[0, 0] == -1 and set(np.unique(raw)) <= {-1, 0, 1, 2}
    untransformed = build_dataset("folder", tmp_path, "train", n_classes=3)[0]
    assert untransformed["img"].dtype == torch.uint8 and untransformed["img"].shape == (3, H, W)
    assert torch.equal(untransformed["label"], torch.from_numpy(raw))


def test_folder_without_labels_is_unlabelled(tmp_path):
    make_folder(tmp_path, None)
    _, labels = FolderDataset(tmp_path, "train", n_classes=4).load(0)
    assert (labels == -1).all()


def test_transform_matches_torchvision_conventions():
    img = Image.fromarray(rgb(10, 25))
    assert resize_shorter(img, 4).size == (10, 4)  # int(4 * 25 / 10) = 10
    assert center_crop_box(10, 25, 4, 4) == (3, 10)  # round(3.0), round(10.5) -> banker's 10
    assert five_crop_boxes(10, 25, 5, 12) == [(0, 0), (0, 13), (5, 0), (5, 13), (2, 6)]
    t, lab = SegTransform(6, crop="none")(img, np.zeros((10, 25), dtype=np.int64))
    assert t.shape == (3, 6, 6) and lab.shape == (6, 6)
    black, _ = SegTransform(4)(Image.new("RGB", (8, 8)), np.zeros((8, 8), dtype=np.int64))
    assert torch.allclose(
        black[:, 0, 0], -torch.tensor(IMAGENET_MEAN) / torch.tensor([0.229, 0.224, 0.225])
    )


# ---- bad input ---------------------------------------------------------------------------


def test_missing_data_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset("cocostuff27", tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"expected .*cityscapes.*leftImg8bit"):
        build_dataset("cityscapes", tmp_path)
    with pytest.raises(FileNotFoundError, match="expected images in"):
        build_dataset("folder", tmp_path, n_classes=2)


def test_empty_data_dir(tmp_path):
    (tmp_path / "imgs" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no images found in"):
        build_dataset("folder", tmp_path, n_classes=2)
    (tmp_path / "cityscapes" / "leftImg8bit" / "val").mkdir(parents=True)
    with pytest.raises(ValueError, match="cityscapes: no images found"):
        build_dataset("cityscapes", tmp_path, "val")


def test_missing_listed_file(tmp_path):
    make_coco(tmp_path, np.zeros((H, W)))
    (tmp_path / "cocostuff" / "annotations" / "val2017" / "000001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"missing files: .*000001\.png"):
        build_dataset("cocostuff27", tmp_path, "val")


def test_unreadable_image_names_the_file(tmp_path):
    make_folder(tmp_path, np.zeros((H, W)))
    (tmp_path / "imgs" / "train" / "img1.jpg").write_bytes(b"not an image")
    ds = build_dataset("folder", tmp_path, n_classes=2)
    with pytest.raises(ValueError, match=r"cannot read image .*img1.jpg"):
        ds[1]


def test_label_image_size_mismatch(tmp_path):
    make_folder(tmp_path, np.zeros((H + 1, W)))
    with pytest.raises(
        ValueError, match=r"label .*img0.png is 16x13 \(WxH\) but image .*img0.jpg is 16x12"
    ):
        build_dataset("folder", tmp_path, n_classes=2)[0]


def test_labels_outside_class_range(tmp_path):
    labels = np.zeros((H, W))
    labels[1, 1] = 5
    make_folder(tmp_path, labels)
    with pytest.raises(
        ValueError, match=r"img0.png holds values outside the class range of 3 classes: \[5\]"
    ):
        build_dataset("folder", tmp_path, n_classes=3).load(0)


def test_wrong_number_of_classes(tmp_path):
    with pytest.raises(ValueError, match="potsdam has 3 classes, got n_classes=27"):
        build_dataset("potsdam", tmp_path, n_classes=27)
    with pytest.raises(ValueError, match="needs n_classes"):
        build_dataset("folder", tmp_path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_dataset("voc", tmp_path)
    with pytest.raises(ValueError, match="split must be one of"):
        build_dataset("potsdam", tmp_path, "test")


def test_rgb_label_is_rejected(tmp_path):
    make_folder(tmp_path, None)
    save_png(tmp_path / "labels" / "train" / "img0.png", rgb())
    save_png(tmp_path / "labels" / "train" / "img1.png", rgb())
    with pytest.raises(ValueError, match="single-channel"):
        build_dataset("folder", tmp_path, n_classes=2).load(0)


# ---- five crops --------------------------------------------------------------------------


def test_five_crops_geometry():
    img = Image.fromarray(rgb(40, 60))
    labels = np.arange(40 * 60).reshape(40, 60) % 7
    crops = five_crops(img, labels, crop_ratio=0.5, size=None)
    boxes = five_crop_boxes(40, 60, 20, 30)
    for (c_img, c_lab), (top, left) in zip(crops, boxes, strict=True):
        np.testing.assert_array_equal(
            np.asarray(c_img), rgb(40, 60)[top : top + 20, left : left + 30]
        )
        np.testing.assert_array_equal(c_lab, labels[top : top + 20, left : left + 30])
    resized = five_crops(img, labels, size=8)
    assert all(c.size == (12, 8) and lab.shape == (8, 12) for c, lab in resized)
    with pytest.raises(ValueError, match="crop_ratio must be in"):
        five_crops(img, labels, crop_ratio=0)
    with pytest.raises(ValueError, match="labels must have the image's shape"):
        five_crops(img, labels[:, 1:])


def test_write_five_crops_round_trip(tmp_path):
    labels = np.random.default_rng(3).integers(0, 3, (H, W))
    labels[0, 0] = 255
    make_folder(tmp_path, labels, n=3)
    ds = build_dataset("folder", tmp_path, n_classes=3)
    out = cropped_root(tmp_path, "folder")
    assert write_five_crops(ds, out, "train", size=4) == 15
    cropped = build_dataset("folder", tmp_path, crop_type="five", n_classes=3)
    assert len(cropped) == 15
    expected = five_crops(*ds.load(2), size=4)
    for k in range(5):
        _, lab = cropped.load(10 + k)
        np.testing.assert_array_equal(lab, expected[k][1])
    with pytest.raises(FileExistsError, match="already exist"):
        write_five_crops(ds, out, "train")
    assert write_five_crops(ds, out, "train", size=4, overwrite=True) == 15


def test_failed_crop_leaves_nothing_half_written(tmp_path, monkeypatch):
    make_folder(tmp_path, np.zeros((H, W)), n=3)
    (tmp_path / "imgs" / "train" / "img2.jpg").write_bytes(b"broken")
    ds = build_dataset("folder", tmp_path, n_classes=3)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"img2\.jpg"):
        write_five_crops(ds, out, "train", size=4)
    assert not (out / "img" / "train").exists() and not (out / "label" / "train").exists()
    assert list((out / "img").iterdir()) == []  # the temporary folder is gone too
    monkeypatch.setattr(crop_mod, "MAX_CLASSES", 2)
    with pytest.raises(ValueError, match="n_classes must be <= 2"):
        write_five_crops(ds, out, "train")


def test_cropped_dataset_needs_crops(tmp_path):
    with pytest.raises(FileNotFoundError, match="run `unseg crop`"):
        build_dataset("cityscapes", tmp_path, crop_type="five")
