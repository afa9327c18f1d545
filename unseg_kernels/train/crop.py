"""Five-crop preprocessing (SPEC section 7): each image becomes its four corner crops and
its center crop at ``crop_ratio`` of its height and width, each resized so its shorter side
is ``size`` (224). STEGO trains COCO-Stuff and Cityscapes on these crops.

The files follow STEGO's ``cropped`` layout so either tool's output can be read by the
other: crop ``5 * i + k`` of image ``i`` is ``img/<split>/<5i+k>.jpg`` (JPEG) and
``label/<split>/<5i+k>.png`` (uint8, class + 1, 0 = ignore).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unseg_kernels.train.datasets import SegmentationDataset
from unseg_kernels.train.transforms import crop, five_crop_boxes, label_image, resize_shorter

CROPS_PER_IMAGE = 5
MAX_CLASSES = 254  # labels are stored + 1 in uint8 PNGs, 0 being "ignore"
JPEG_QUALITY = 95


def five_crops(
    img: Image.Image,
    labels: np.ndarray,
    *,
    crop_ratio: float = 0.5,
    size: int | None = 224,
    image_resample: str = "nearest",
) -> list[tuple[Image.Image, np.ndarray]]:
    """The five crops of an image and its label map.

    Args:
        img: RGB image.
        labels: ``[H, W]`` int labels (-1 = ignore), same size as ``img``.
        crop_ratio: crop height and width as a fraction of the image's (``int`` of the
            product, as STEGO).
        size: shorter side of each crop after resizing; None keeps the crop's size.
        image_resample: ``nearest`` (STEGO's loaders), ``bilinear`` or ``bicubic``; labels
            always use nearest.

    Returns:
        ``[(crop image, crop labels [h, w])]`` in torchvision's ``five_crop`` order:
        top-left, top-right, bottom-left, bottom-right, center.

    Example:
        >>> crops = five_crops(Image.open("a.jpg").convert("RGB"), labels)
        >>> [c.size for c, _ in crops]  # five (W, H) with min(W, H) == 224
    """
    if not 0 < crop_ratio <= 1:
        raise ValueError(f"crop_ratio must be in (0, 1], got {crop_ratio}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size must be a positive int or None, got {size!r}")
    h, w = img.height, img.width
    if labels.shape != (h, w):
        raise ValueError(f"labels must have the image's shape {(h, w)}, got {labels.shape}")
    ch, cw = int(h * crop_ratio), int(w * crop_ratio)
    if ch < 1 or cw < 1:
        raise ValueError(f"crop_ratio {crop_ratio} of a {w}x{h} image leaves an empty crop")
    lab = label_image(labels)
    out = []
    for top, left in five_crop_boxes(h, w, ch, cw):
        c_img, c_lab = crop(img, top, left, ch, cw), crop(lab, top, left, ch, cw)
        if size is not None:
            c_img = resize_shorter(c_img, size, image_resample)
            c_lab = resize_shorter(c_lab, size, "nearest")
        out.append((c_img, np.asarray(c_lab, dtype=np.int64)))
    return out


class _CropWriter(torch.utils.data.Dataset):
    """Writes the crops of image ``i`` when item ``i`` is loaded, so a DataLoader's workers
    share the work."""

    def __init__(self, dataset: SegmentationDataset, img_dir: Path, label_dir: Path, **kwargs):
        self.dataset, self.img_dir, self.label_dir, self.kwargs = (
            dataset,
            img_dir,
            label_dir,
            kwargs,
        )

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> int:
        img, labels = self.dataset.load(index)
        for k, (c_img, c_lab) in enumerate(five_crops(img, labels, **self.kwargs)):
            n = CROPS_PER_IMAGE * index + k
            c_img.save(self.img_dir / f"{n}.jpg", "JPEG", quality=JPEG_QUALITY)
            Image.fromarray((c_lab + 1).astype(np.uint8)).save(self.label_dir / f"{n}.png")
        return index


def write_five_crops(
    dataset: SegmentationDataset,
    out_root: str | Path,
    split: str,
    *,
    crop_ratio: float = 0.5,
    size: int | None = 224,
    image_resample: str = "nearest",
    workers: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> int:
    """Writes the five crops of every image of ``dataset`` under ``out_root`` (STEGO's
    ``cropped/<name>_five_crop_<ratio>`` folder; see
    :func:`unseg_kernels.train.datasets.cropped_root`).

    The split is written into temporary folders that replace ``img/<split>`` and
    ``label/<split>`` only once every crop is on disk, so an interrupted or failed run
    leaves no half-written split behind.

    Args:
        dataset: the source dataset (its ``load`` gives images and mapped labels).
        out_root: the cropped dataset's root.
        split: the split name the crops are filed under.
        crop_ratio, size, image_resample: as :func:`five_crops`.
        workers: DataLoader worker processes (0 = in this process).
        overwrite: replace an existing split instead of raising FileExistsError.
        progress: show a tqdm bar.

    Returns:
        The number of crops written.

    Example:
        >>> ds = build_dataset("cityscapes", "/data", "train")
        >>> write_five_crops(ds, cropped_root("/data", "cityscapes"), "train", workers=8)
    """
    if dataset.n_classes > MAX_CLASSES:
        raise ValueError(f"crops store labels in uint8: n_classes must be <= {MAX_CLASSES}")
    out_root = Path(out_root)
    finals = [out_root / "img" / split, out_root / "label" / split]
    existing = [str(p) for p in finals if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} already exist; pass overwrite=True (--overwrite)"
        )
    temps = [p.with_name(f".{split}.partial") for p in finals]
    for t in temps:
        shutil.rmtree(t, ignore_errors=True)
        t.mkdir(parents=True)
    try:
        writer = _CropWriter(
            dataset,
            temps[0],
            temps[1],
            crop_ratio=crop_ratio,
            size=size,
            image_resample=image_resample,
        )
        loader = torch.utils.data.DataLoader(writer, batch_size=None, num_workers=workers)
        if progress:
            from tqdm import tqdm

            loader = tqdm(loader, desc=f"crop {dataset.name} {split}", unit="img")
        for _ in loader:
            pass
    except BaseException:
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)
        raise
    for temp, final in zip(temps, finals, strict=True):
        if final.exists():
            shutil.rmtree(final)
        temp.replace(final)
    return CROPS_PER_IMAGE * len(dataset)
