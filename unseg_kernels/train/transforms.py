"""Image and label geometry with PIL and torch only (no torchvision), following the
torchvision conventions STEGO's loaders rely on.

STEGO resizes images as well as labels with NEAREST (its ``get_transform``); that oddity is
the default here (``image_resample="nearest"``) so features match the original pipeline.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from unseg_kernels.train.names import RESAMPLE_NAMES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESAMPLE = {name: Image.Resampling[name.upper()] for name in RESAMPLE_NAMES}


def _resample(name: str) -> Image.Resampling:
    if name not in RESAMPLE:
        raise ValueError(f"resample must be one of {sorted(RESAMPLE)}, got {name!r}")
    return RESAMPLE[name]


def _size(img: Image.Image | np.ndarray) -> tuple[int, int]:
    """(height, width) of a PIL image or an ``[H, W, ...]`` array."""
    if isinstance(img, Image.Image):
        return img.height, img.width
    return int(img.shape[0]), int(img.shape[1])


def label_image(label: np.ndarray) -> Image.Image:
    """An int label map ``[H, W]`` (ignore = -1) as a 32-bit PIL image, so it can be resized
    with NEAREST exactly like the image."""
    return Image.fromarray(np.ascontiguousarray(label, dtype=np.int32), mode="I")


def resize_shorter(img: Image.Image, size: int, resample: str = "nearest") -> Image.Image:
    """Resizes so the shorter side is ``size``, keeping the aspect ratio (the longer side is
    truncated to an int, as torchvision's ``Resize(int)``)."""
    h, w = _size(img)
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_h, new_w = (size, new_long) if h <= w else (new_long, size)
    if (new_h, new_w) == (h, w):
        return img
    return img.resize((new_w, new_h), _resample(resample))


def crop(img: Image.Image, top: int, left: int, height: int, width: int) -> Image.Image:
    """The ``height x width`` window at (``top``, ``left``)."""
    return img.crop((left, top, left + width, top + height))


def center_crop_box(h: int, w: int, ch: int, cw: int) -> tuple[int, int]:
    """Top-left corner of torchvision's center crop (``round`` of the half margins)."""
    if ch > h or cw > w:
        raise ValueError(f"crop size {(ch, cw)} is larger than the image {(h, w)}")
    return round((h - ch) / 2.0), round((w - cw) / 2.0)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size x size`` window."""
    h, w = _size(img)
    top, left = center_crop_box(h, w, size, size)
    return crop(img, top, left, size, size)


def five_crop_boxes(h: int, w: int, ch: int, cw: int) -> list[tuple[int, int]]:
    """Top-left corners of torchvision's ``five_crop``: top-left, top-right, bottom-left,
    bottom-right, center."""
    if ch > h or cw > w:
        raise ValueError(f"crop size {(ch, cw)} is larger than the image {(h, w)}")
    return [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), center_crop_box(h, w, ch, cw)]


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as float ``[3, H, W]`` in [0, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Per-channel ``(x - mean) / std`` of ``[..., 3, H, W]``."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Inverse of :func:`normalize`."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return x * s + m


class SegTransform(NamedTuple):
    """Resize (shorter side to ``res``) + optional center crop + ImageNet normalisation,
    applied identically to an image and its label map (STEGO's ``get_transform`` pair).

    Attributes:
        res: target size of the shorter side (and of the square crop).
        crop: ``"center"`` (square ``res x res`` crop) or ``"none"`` (resize to exactly
            ``res x res``, STEGO's ``crop_type=None``).
        image_resample: ``"nearest"`` (STEGO), ``"bilinear"`` or ``"bicubic"``.

    Example:
        >>> img, label = SegTransform(224)(pil_image, label_array)
        >>> img.shape, label.shape  # [3, 224, 224], [224, 224]
    """

    res: int
    crop: str = "center"
    image_resample: str = "nearest"

    def __call__(self, img: Image.Image, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the normalised image ``[3, res, res]`` and int64 labels ``[res, res]``."""
        lab = label_image(label)
        if self.crop == "center":
            img = center_crop(resize_shorter(img, self.res, self.image_resample), self.res)
            lab = center_crop(resize_shorter(lab, self.res, "nearest"), self.res)
        elif self.crop == "none":
            img = img.resize((self.res, self.res), _resample(self.image_resample))
            lab = lab.resize((self.res, self.res), Image.Resampling.NEAREST)
        else:
            raise ValueError(f"crop must be 'center' or 'none', got {self.crop!r}")
        label_t = torch.from_numpy(np.asarray(lab, dtype=np.int64).copy())
        return normalize(to_tensor(img)), label_t
