"""Segmentation datasets in STEGO's directory layouts, plus a generic folder of images and
label PNGs.

Every dataset yields RGB images and int64 label maps in which -1 means "ignore". Raw label
values are mapped through a lookup table; a raw value that the dataset's convention does not
define is an error naming the file (never a silently wrong class).

Layouts (``data_dir`` is STEGO's ``pytorch_data_dir``, or the dataset folder itself):

| name | files |
|---|---|
| cocostuff27 | ``cocostuff/curated/{train2017,val2017}/<list>.txt`` (image ids),
  ``cocostuff/images/<split>2017/<id>.jpg``, ``cocostuff/annotations/<split>2017/<id>.png``
  (fine ids 0..181, 255 = ignore); the train list is ``Coco164kFull_Stuff_Coarse.txt``, the
  val list ``Coco164kFull_Stuff_Coarse_7.txt`` (STEGO's curated splits) |
| cityscapes | ``cityscapes/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` and
  ``cityscapes/gtFine/<split>/<city>/<name>_gtFine_labelIds.png``; class = labelId - 7 |
| potsdam | ``potsdam/{labelled_train,unlabelled_train,labelled_test,all}.txt`` (ids),
  ``potsdam/imgs/<id>.mat`` (key ``img``, ``[H, W, 4]`` RGB + IR; IR is dropped) and
  ``potsdam/gt/<id>.mat`` (key ``gt``, ids 0..5, 255 = ignore) |
| folder | ``<data_dir>/imgs/<split>/*`` and optional ``<data_dir>/labels/<split>/<stem>.png``
  (class ids 0..n_classes-1, ``ignore_index`` = ignore), paired by file stem |
| cropped | ``<data_dir>/cropped/<name>_<crop_type>_crop_<ratio>/{img,label}/<split>/<i>.{jpg,png}``
  written by :func:`unseg_kernels.train.crop.write_five_crops` (labels stored + 1, 0 = ignore) |

Example:
    >>> ds = build_dataset("potsdam", "/data", "val", transform=SegTransform(320))
    >>> sample = ds[0]  # {"img": [3, 320, 320], "label": [320, 320], "index": 0}
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from unseg_kernels.train.names import DATASETS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE = -1
INVALID = -2  # lookup-table entry for raw values the convention does not define
LUT_SIZE = 65536  # 8- and 16-bit label PNGs

# STEGO's class names (``get_class_labels``); COCO's repeated names get a suffix.
COCOSTUFF27_CLASSES = (
    "electronic",
    "appliance",
    "food-things",
    "furniture-things",
    "indoor",
    "kitchen",
    "accessory",
    "animal",
    "outdoor",
    "person",
    "sports",
    "vehicle",
    "ceiling",
    "floor",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial",
    "textile",
    "wall",
    "window",
    "building",
    "ground",
    "plant",
    "sky",
    "solid",
    "structural",
    "water",
)
CITYSCAPES_CLASSES = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)
POTSDAM_CLASSES = ("roads and cars", "buildings and clutter", "trees and vegetation")

CITYSCAPES_FIRST_LABEL_ID = 7  # labelIds 0..6 are void; 7..33 -> classes 0..26
CITYSCAPES_MAX_LABEL_ID = 33
POTSDAM_FINE_TO_COARSE = {0: 0, 4: 0, 1: 1, 5: 1, 2: 2, 3: 2, 255: IGNORE}
COCO_LISTS = {"train": "Coco164kFull_Stuff_Coarse.txt", "val": "Coco164kFull_Stuff_Coarse_7.txt"}
POTSDAM_LISTS = {
    "train": ("labelled_train.txt",),
    "unlabelled_train": ("unlabelled_train.txt",),
    "val": ("labelled_test.txt",),
    "train+val": ("labelled_train.txt", "labelled_test.txt"),
    "all": ("all.txt",),
}


def cocostuff27_fine_to_coarse() -> dict[int, int]:
    """COCO-Stuff fine id (0..181) -> cocostuff27 class (0..26), from the packaged table."""
    text = resources.files("unseg_kernels.train").joinpath("data/cocostuff27_fine_to_coarse.json")
    table = json.loads(text.read_text())["fine_to_coarse"]
    return {int(k): int(v) for k, v in table.items()}


def make_lut(mapping: dict[int, int], default: int) -> np.ndarray:
    """A ``[65536]`` int64 lookup table: ``mapping`` where given, ``default`` elsewhere."""
    lut = np.full(LUT_SIZE, default, dtype=np.int64)
    for raw, cls in mapping.items():
        lut[raw] = cls
    return lut


class SegmentationDataset(Dataset):
    """Images with label maps; subclasses only list their files and label convention.

    Args:
        items: ``(image_path, label_path or None)`` pairs; a missing label means unlabelled
            (all pixels ignored).
        n_classes: number of classes; mapped labels are in ``[0, n_classes)`` or -1.
        lut: ``[65536]`` raw value -> class, -1 ignore, -2 undefined (an error).
        transform: applied to ``(PIL image, labels [H, W])`` in ``__getitem__``, e.g.
            :class:`~unseg_kernels.train.transforms.SegTransform`; None returns the raw
            ``[3, H, W]`` uint8 image.
        class_names: optional names, one per class.

    ``__getitem__`` returns ``{"img", "label", "index"}``; :meth:`load` returns the raw PIL
    image and mapped labels (what cropping and visualisation use).
    """

    name = "dataset"

    def __init__(
        self,
        items: Sequence[tuple[Path, Path | None]],
        *,
        n_classes: int,
        lut: np.ndarray,
        transform: Callable | None = None,
        class_names: Sequence[str] | None = None,
        source: str | Path = "",
    ) -> None:
        _check_n_classes(n_classes)
        if not items:
            raise ValueError(f"{self.name}: no images found in {source}")
        missing = [str(p) for pair in items for p in pair if p is not None and not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise FileNotFoundError(f"{self.name}: missing files: {', '.join(missing[:3])}{more}")
        self.items = list(items)
        self.n_classes = n_classes
        self.lut = lut
        self.transform = transform
        self.class_names = tuple(class_names) if class_names else tuple(map(str, range(n_classes)))

    def __len__(self) -> int:
        return len(self.items)

    def read_image(self, path: Path) -> Image.Image:
        """The RGB image at ``path``; unreadable files raise ValueError naming the file."""
        try:
            with Image.open(path) as img:
                return img.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{self.name}: cannot read image {path}: {e}") from e

    def read_raw_label(self, path: Path) -> np.ndarray:
        """Raw label values ``[H, W]`` stored at ``path``."""
        try:
            with Image.open(path) as img:
                raw = np.asarray(img)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"{self.name}: cannot read label {path}: {e}") from e
        if raw.ndim != 2:
            raise ValueError(
                f"{self.name}: label {path} must be a single-channel image of class ids, "
                f"got shape {raw.shape}"
            )
        return raw

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw values -> classes through the lookup table; undefined values raise."""
        if raw.dtype.kind not in "iu" or (raw.size and (raw.min() < 0 or raw.max() >= LUT_SIZE)):
            bad = np.unique(raw[(raw < 0) | (raw >= LUT_SIZE)]) if raw.dtype.kind in "iu" else []
            raise ValueError(
                f"{self.name}: label {path} holds values outside the class range "
                f"(dtype {raw.dtype}, values {list(bad)[:8]})"
            )
        mapped = self.lut[raw]
        bad = mapped == INVALID
        if bad.any():
            values = np.unique(raw[bad])
            raise ValueError(
                f"{self.name}: label {path} holds values outside the class range of "
                f"{self.n_classes} classes: {values[:8].tolist()}"
            )
        return mapped

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The RGB image and its mapped labels ``[H, W]`` (int64, -1 = ignore)."""
        image_path, label_path = self.items[index]
        img = self.read_image(image_path)
        if label_path is None:
            return img, np.full((img.height, img.width), IGNORE, dtype=np.int64)
        labels = self.map_labels(self.read_raw_label(label_path), label_path)
        if labels.shape != (img.height, img.width):
            raise ValueError(
                f"{self.name}: label {label_path} is {labels.shape[1]}x{labels.shape[0]} "
                f"(WxH) but image {image_path} is {img.width}x{img.height}"
            )
        return img, labels

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        img, labels = self.load(index)
        if self.transform is None:
            arr = np.asarray(img, dtype=np.uint8).copy()
            return {
                "img": torch.from_numpy(arr).permute(2, 0, 1),
                "label": torch.from_numpy(labels),
                "index": index,
            }
        img_t, label_t = self.transform(img, labels)
        return {"img": img_t, "label": label_t, "index": index}


def _root(data_dir: str | Path, subdir: str, marker: str, name: str) -> Path:
    """``data_dir/subdir`` (STEGO's layout) or ``data_dir`` itself when it holds ``marker``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"{name}: data_dir {data_dir} does not exist or is not a folder")
    for root in (data_dir / subdir, data_dir):
        if (root / marker).exists():
            return root
    raise FileNotFoundError(
        f"{name}: expected {data_dir / subdir / marker} (STEGO's layout, see "
        "unseg_kernels.train.datasets)"
    )


def _read_list(path: Path, name: str) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"{name}: image list {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def _check_n_classes(n_classes: object) -> None:
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive int, got {n_classes!r}")


def _check_split(split: str, splits: Sequence[str], name: str) -> None:
    if split not in splits:
        raise ValueError(f"{name}: split must be one of {list(splits)}, got {split!r}")


class CocoStuff27(SegmentationDataset):
    """COCO-Stuff with STEGO's curated image lists, fine ids mapped to 27 coarse classes
    (packaged table ``cocostuff27_fine_to_coarse.json``; ids not in it are ignored)."""

    name = "cocostuff27"
    SPLITS = ("train", "val", "train+val")

    def __init__(self, data_dir: str | Path, split: str = "train", **kwargs) -> None:
        _check_split(split, self.SPLITS, self.name)
        root = _root(data_dir, "cocostuff", "curated", self.name)
        items = []
        for part in split.split("+"):
            folder = f"{part}2017"
            for image_id in _read_list(root / "curated" / folder / COCO_LISTS[part], self.name):
                items.append(
                    (
                        root / "images" / folder / f"{image_id}.jpg",
                        root / "annotations" / folder / f"{image_id}.png",
                    )
                )
        lut = make_lut(cocostuff27_fine_to_coarse(), IGNORE)
        super().__init__(
            items, n_classes=27, lut=lut, class_names=COCOSTUFF27_CLASSES, source=root, **kwargs
        )


class Cityscapes(SegmentationDataset):
    """Cityscapes fine annotations, class = labelId - 7 (negative = ignore); labelIds above
    33 are an error."""

    name = "cityscapes"
    SPLITS = ("train", "val", "test")

    def __init__(self, data_dir: str | Path, split: str = "train", **kwargs) -> None:
        _check_split(split, self.SPLITS, self.name)
        root = _root(data_dir, "cityscapes", "leftImg8bit", self.name)
        image_dir = root / "leftImg8bit" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"{self.name}: image folder {image_dir} does not exist")
        items = []
        for image_path in sorted(image_dir.glob("*/*_leftImg8bit.png")):
            stem = image_path.name[: -len("_leftImg8bit.png")]
            label = root / "gtFine" / split / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
            items.append((image_path, label))
        mapping = {i: i - CITYSCAPES_FIRST_LABEL_ID for i in range(CITYSCAPES_MAX_LABEL_ID + 1)}
        lut = make_lut({k: max(v, IGNORE) for k, v in mapping.items()}, INVALID)
        super().__init__(
            items,
            n_classes=27,
            lut=lut,
            class_names=CITYSCAPES_CLASSES,
            source=image_dir,
            **kwargs,
        )


class Potsdam(SegmentationDataset):
    """ISPRS Potsdam-3 as STEGO ships it: ``.mat`` tiles, fine ids {0,4}->0, {1,5}->1,
    {2,3}->2, 255 -> ignore. A tile without a ``gt`` file is unlabelled (all ignored; STEGO
    filled it with class 1)."""

    name = "potsdam"
    SPLITS = tuple(POTSDAM_LISTS)

    def __init__(self, data_dir: str | Path, split: str = "train", **kwargs) -> None:
        _check_split(split, self.SPLITS, self.name)
        root = _root(data_dir, "potsdam", "imgs", self.name)
        items = []
        for list_name in POTSDAM_LISTS[split]:
            for image_id in _read_list(root / list_name, self.name):
                gt = root / "gt" / f"{image_id}.mat"
                items.append((root / "imgs" / f"{image_id}.mat", gt if gt.is_file() else None))
        lut = make_lut(POTSDAM_FINE_TO_COARSE, INVALID)
        super().__init__(
            items, n_classes=3, lut=lut, class_names=POTSDAM_CLASSES, source=root, **kwargs
        )

    def _mat(self, path: Path, key: str) -> np.ndarray:
        from scipy.io import loadmat

        try:
            data = loadmat(path)
        except (ValueError, OSError, TypeError) as e:
            raise ValueError(f"{self.name}: cannot read {path}: {e}") from e
        if key not in data:
            raise ValueError(f"{self.name}: {path} has no {key!r} array")
        return np.asarray(data[key])

    def read_image(self, path: Path) -> Image.Image:
        arr = self._mat(path, "img")
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise ValueError(f"{self.name}: image {path} must be [H, W, >=3], got {arr.shape}")
        arr = arr[:, :, :3]
        if arr.dtype != np.uint8:  # floats in [0, 1], converted as torchvision's to_pil_image
            arr = (arr.astype(np.float32) * 255).astype(np.uint8)
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")

    def read_raw_label(self, path: Path) -> np.ndarray:
        arr = self._mat(path, "gt")
        if arr.ndim != 2:
            raise ValueError(f"{self.name}: label {path} must be [H, W], got {arr.shape}")
        return arr.astype(np.int64)


class FolderDataset(SegmentationDataset):
    """A folder of images with optional label PNGs (STEGO's ``directory`` layout):
    ``imgs/<split>/<stem>.<ext>`` and ``labels/<split>/<stem>.png``. Label values are class
    ids in ``[0, n_classes)``; ``ignore_index`` is ignored; anything else is an error. Without
    a ``labels`` folder every image is unlabelled."""

    name = "folder"

    def __init__(
        self,
        data_dir: str | Path,
        split: str = "train",
        *,
        n_classes: int,
        ignore_index: int = 255,
        **kwargs,
    ) -> None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise FileNotFoundError(
                f"folder: data_dir {data_dir} does not exist or is not a folder"
            )
        image_dir = data_dir / "imgs" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(f"folder: expected images in {image_dir}")
        images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        label_dir = data_dir / "labels" / split
        items = []
        for image_path in images:
            label = label_dir / f"{image_path.stem}.png" if label_dir.is_dir() else None
            if label is not None and not label.is_file():
                raise FileNotFoundError(f"folder: image {image_path} has no label {label}")
            items.append((image_path, label))
        _check_n_classes(n_classes)
        if not n_classes <= ignore_index < LUT_SIZE:
            raise ValueError(
                f"ignore_index must be in [n_classes, {LUT_SIZE}) = [{n_classes}, {LUT_SIZE}), "
                f"got {ignore_index}"
            )
        lut = make_lut({i: i for i in range(n_classes)} | {ignore_index: IGNORE}, INVALID)
        super().__init__(items, n_classes=n_classes, lut=lut, source=image_dir, **kwargs)


class CroppedDataset(SegmentationDataset):
    """Crops written by ``unseg crop`` (or STEGO's ``crop_datasets.py``): ``img/<split>/<i>.jpg``
    and ``label/<split>/<i>.png`` holding class + 1 (0 = ignore)."""

    name = "cropped"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        n_classes: int,
        class_names: Sequence[str] | None = None,
        **kwargs,
    ) -> None:
        root = Path(root)
        image_dir, label_dir = root / "img" / split, root / "label" / split
        if not image_dir.is_dir():
            raise FileNotFoundError(
                f"cropped: {image_dir} does not exist; run `unseg crop` for this dataset first"
            )
        stems = sorted((p.stem for p in image_dir.glob("*.jpg") if p.stem.isdigit()), key=int)
        if stems != [str(i) for i in range(len(stems))]:
            raise ValueError(f"cropped: {image_dir} must hold 0.jpg .. N-1.jpg without gaps")
        items = [(image_dir / f"{s}.jpg", label_dir / f"{s}.png") for s in stems]
        lut = make_lut({i + 1: i for i in range(n_classes)} | {0: IGNORE}, INVALID)
        super().__init__(
            items,
            n_classes=n_classes,
            lut=lut,
            class_names=class_names,
            source=image_dir,
            **kwargs,
        )


def cropped_root(
    data_dir: str | Path, name: str, crop_type: str = "five", ratio: float = 0.5
) -> Path:
    """Where the crops of dataset ``name`` live: STEGO's
    ``<data_dir>/cropped/<name>_<crop_type>_crop_<ratio>``."""
    return Path(data_dir) / "cropped" / f"{name}_{crop_type}_crop_{ratio}"


def build_dataset(
    name: str,
    data_dir: str | Path,
    split: str = "train",
    *,
    crop_type: str | None = None,
    crop_ratio: float = 0.5,
    n_classes: int | None = None,
    transform: Callable | None = None,
) -> SegmentationDataset:
    """The dataset ``name`` (one of :data:`DATASETS`) at ``data_dir``.

    Args:
        name: ``cocostuff27``, ``cityscapes``, ``potsdam`` or ``folder``.
        data_dir: STEGO's data root (holding ``cocostuff/``, ``cityscapes/``, ``potsdam/``,
            ``cropped/``), or the dataset folder itself; for ``folder``, the folder that
            holds ``imgs/`` and ``labels/``.
        split: e.g. ``train`` or ``val``.
        crop_type: None reads the original images; ``"five"`` reads the crops
            ``unseg crop`` wrote under ``data_dir/cropped``.
        crop_ratio: which crops (the ratio they were made with).
        n_classes: required for ``folder``; must match the dataset's count otherwise.
        transform: see :class:`SegmentationDataset`.
    """
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    fixed = {"cocostuff27": 27, "cityscapes": 27, "potsdam": 3}
    if name == "folder":
        if n_classes is None:
            raise ValueError("the folder dataset needs n_classes (--n-classes)")
    elif n_classes is not None and n_classes != fixed[name]:
        raise ValueError(f"{name} has {fixed[name]} classes, got n_classes={n_classes}")
    if crop_type is not None:
        if not Path(data_dir).is_dir():
            raise FileNotFoundError(
                f"{name}: data_dir {data_dir} does not exist or is not a folder"
            )
        names = {
            "cocostuff27": COCOSTUFF27_CLASSES,
            "cityscapes": CITYSCAPES_CLASSES,
            "potsdam": POTSDAM_CLASSES,
        }
        return CroppedDataset(
            cropped_root(data_dir, name, crop_type, crop_ratio),
            split,
            n_classes=n_classes or fixed[name],
            class_names=names.get(name),
            transform=transform,
        )
    if name == "folder":
        return FolderDataset(data_dir, split, n_classes=n_classes, transform=transform)
    cls = {"cocostuff27": CocoStuff27, "cityscapes": Cityscapes, "potsdam": Potsdam}[name]
    return cls(data_dir, split, transform=transform)
