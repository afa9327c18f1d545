"""The embedded demo: texture mosaics built from real photographs that ship inside
scikit-image, with exact label maps, and a backbone that needs no download (a fixed Gabor
filter bank, :class:`FilterBankBackbone`).

Each mosaic is partitioned into a few regions with wavy boundaries; every region shows one
real texture (scikit-image's ``brick``, ``grass``, ``gravel`` and the ``moon`` surface),
randomly cropped, scaled and given a random brightness
and contrast, so mean intensity says nothing about the class: only texture does. Training
mosaics use the top half of every source photograph and validation mosaics the bottom
half, so evaluation sees texture pixels the head never trained on. Everything is a
deterministic function of the seed.

Example:
    >>> train = TextureMosaics(256, split="train", seed=0)
    >>> sample = train[0]  # {"img": [3, 128, 128], "label": [128, 128], "index": 0}
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from unseg_kernels.train.transforms import denormalize, normalize, to_tensor

DEMO_TEXTURES = ("brick", "grass", "gravel", "moon")
DEMO_SPLITS = ("train", "val")
SOURCE_SIZE = 512  # every source photograph is 512x512 grayscale
MIN_SCALE, MAX_SCALE = 0.5, 1.0  # texture zoom range
MEAN_RANGE, STD_RANGE = (0.3, 0.7), (0.08, 0.22)  # per-region brightness and contrast
TINT = 0.15  # per-image colour tint amplitude
WAVE_AMPLITUDE = 0.08  # boundary waviness, as a fraction of the image side
LOG_EPS = 1e-2  # filter-bank energies below this are treated as flat


def _source_textures(names: tuple[str, ...]) -> list[np.ndarray]:
    """The named scikit-image photographs as float32 ``[512, 512]`` in [0, 1]."""
    import skimage.data

    out = []
    for name in names:
        arr = np.asarray(getattr(skimage.data, name)(), dtype=np.float32) / 255.0
        if arr.shape != (SOURCE_SIZE, SOURCE_SIZE):
            raise ValueError(f"texture {name!r} must be {SOURCE_SIZE}x{SOURCE_SIZE} grayscale")
        out.append(arr)
    return out


def _texture_patch(src: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size x size`` view of ``src`` at a random zoom, normalised to zero mean
    and unit standard deviation. Not rotated: orientation is part of what tells the
    textures apart (brick courses run horizontally)."""
    scale = rng.uniform(MIN_SCALE, MAX_SCALE)
    side = min(round(size / scale), src.shape[0], src.shape[1])
    top = rng.integers(0, src.shape[0] - side + 1)
    left = rng.integers(0, src.shape[1] - side + 1)
    window = Image.fromarray(src[top : top + side, left : left + side])
    patch = np.asarray(window.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    return (patch - patch.mean()) / max(float(patch.std()), 1e-6)


def _regions(size: int, n_regions: int, rng: np.random.Generator) -> np.ndarray:
    """A partition of the image into ``n_regions`` Voronoi cells with wavy boundaries."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Warp the coordinates with two random low-frequency waves so cells are not polygons.
    for _ in range(2):
        fy, fx = rng.uniform(1.0, 3.0, size=2)
        py, px = rng.uniform(0, 2 * math.pi, size=2)
        yy, xx = (
            yy + WAVE_AMPLITUDE * np.sin(2 * math.pi * fx * xx + px),
            xx + WAVE_AMPLITUDE * np.sin(2 * math.pi * fy * yy + py),
        )
    seeds = rng.uniform(0, 1, size=(n_regions, 2)).astype(np.float32)
    dist = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return dist.argmin(0)


def make_mosaic(
    sources: list[np.ndarray],
    size: int,
    rng: np.random.Generator,
    regions: tuple[int, int] = (2, 4),
) -> tuple[np.ndarray, np.ndarray]:
    """One mosaic: an RGB uint8 image ``[size, size, 3]`` and int64 labels ``[size, size]``
    (index into ``sources``). Every mosaic shows at least two classes."""
    n_classes = len(sources)
    n_regions = int(rng.integers(regions[0], regions[1] + 1))
    cells = _regions(size, n_regions, rng)
    classes = rng.integers(0, n_classes, size=n_regions)
    if n_classes > 1 and len(set(classes.tolist())) < 2:
        classes[1] = (classes[0] + 1 + rng.integers(n_classes - 1)) % n_classes
    gray = np.zeros((size, size), dtype=np.float32)
    labels = np.zeros((size, size), dtype=np.int64)
    for r in range(n_regions):
        mask = cells == r
        patch = _texture_patch(sources[classes[r]], size, rng)
        gray[mask] = rng.uniform(*MEAN_RANGE) + rng.uniform(*STD_RANGE) * patch[mask]
        labels[mask] = classes[r]
    tint = 1.0 + rng.uniform(-TINT, TINT, size=3).astype(np.float32)
    rgb = np.clip(gray[..., None] * tint, 0.0, 1.0)
    return (rgb * 255 + 0.5).astype(np.uint8), labels


class TextureMosaics(torch.utils.data.Dataset):
    """The embedded demo dataset (see the module docstring).

    Args:
        n_images: number of mosaics.
        split: ``train`` (top halves of the photographs) or ``val`` (bottom halves).
        size: image side in pixels (a multiple of the backbone's stride).
        seed: everything is a deterministic function of it (and of ``split``).
        textures: scikit-image photograph names, one class each.
        regions: min and max regions per mosaic.

    Attributes:
        images: ``[N, size, size, 3]`` uint8; labels: ``[N, size, size]`` int64.
    """

    def __init__(
        self,
        n_images: int,
        *,
        split: str = "train",
        size: int = 128,
        seed: int = 0,
        textures: tuple[str, ...] = DEMO_TEXTURES,
        regions: tuple[int, int] = (2, 4),
    ) -> None:
        if split not in DEMO_SPLITS:
            raise ValueError(f"split must be one of {DEMO_SPLITS}, got {split!r}")
        if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
            raise ValueError(f"n_images must be a positive int, got {n_images!r}")
        if size < 16 or size > SOURCE_SIZE // 2:
            raise ValueError(f"size must be in [16, {SOURCE_SIZE // 2}], got {size}")
        if not 1 <= regions[0] <= regions[1]:
            raise ValueError(f"regions must be (min, max) with 1 <= min <= max, got {regions}")
        half = SOURCE_SIZE // 2
        rows = slice(0, half) if split == "train" else slice(half, SOURCE_SIZE)
        sources = [src[rows] for src in _source_textures(tuple(textures))]
        rng = np.random.default_rng([seed, DEMO_SPLITS.index(split)])
        pairs = [make_mosaic(sources, size, rng, regions) for _ in range(n_images)]
        self.images = np.stack([p[0] for p in pairs])
        self.labels = np.stack([p[1] for p in pairs])
        self.n_classes = len(textures)
        self.class_names = tuple(textures)
        self.name = "texture-mosaics"

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[Image.Image, np.ndarray]:
        """The RGB image and its labels ``[H, W]``."""
        return Image.fromarray(self.images[index]), self.labels[index]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        img, labels = self.load(index)
        return {
            "img": normalize(to_tensor(img)),
            "label": torch.from_numpy(labels.copy()),
            "index": index,
        }


class FilterBankBackbone(nn.Module):
    """A fixed texture descriptor with a ViT backbone's interface: Gabor energies at
    ``n_scales`` octaves and ``n_orient`` orientations, averaged over ``pool``-pixel windows
    every ``patch_size`` pixels, log-compressed and standardised over channels per position
    (the role of a ViT's final norm).

    Why this design: the log turns a region's contrast into an additive constant that the
    per-position standardisation removes, and the zero-mean Gabor pairs ignore brightness, so
    the features describe texture only, which is what the demo mosaics vary. It has no
    parameters, needs no download and costs milliseconds per image on a CPU.

    Args:
        n_scales: octaves (the image is halved between them; the same kernels are reused).
        n_orient: orientations per octave.
        frequency: the Gabor carrier frequency at the finest octave (cycles per pixel).
        patch_size: output stride, like a ViT's patch.
        pool: side of the averaging window (>= patch_size, for some spatial context).

    Example:
        >>> fb = FilterBankBackbone()
        >>> fb(images).shape  # images [B, 3, 128, 128] -> [B, 24, 16, 16]
    """

    def __init__(
        self,
        *,
        n_scales: int = 4,
        n_orient: int = 6,
        frequency: float = 0.25,
        patch_size: int = 8,
        pool: int = 32,
    ) -> None:
        super().__init__()
        if pool < patch_size or (pool - patch_size) % 2:
            raise ValueError(f"pool must be >= patch_size with an even difference, got {pool}")
        sigma = 0.56 / frequency  # a one-octave bandwidth
        half = math.ceil(2.5 * sigma)
        r = torch.arange(-half, half + 1, dtype=torch.float32)
        yy, xx = torch.meshgrid(r, r, indexing="ij")
        envelope = torch.exp(-(xx**2 + yy**2) / (2 * sigma**2))
        kernels = []
        for o in range(n_orient):
            theta = math.pi * o / n_orient
            phase = 2 * math.pi * frequency * (xx * math.cos(theta) + yy * math.sin(theta))
            even = envelope * torch.cos(phase)
            even = even - envelope * (even.sum() / envelope.sum())  # zero mean: no DC response
            odd = envelope * torch.sin(phase)
            scale = even.abs().sum()
            kernels += [even / scale, odd / scale]
        self.register_buffer("kernels", torch.stack(kernels)[:, None], persistent=False)
        self.n_scales, self.n_orient = n_scales, n_orient
        self.patch_size, self.pool = patch_size, pool
        self.embed_dim = n_scales * n_orient

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` (ImageNet-normalised) -> ``[B, n_scales * n_orient, H/p,
        W/p]``."""
        from unseg_kernels.train.backbone import check_images

        h, w = check_images(images, self.patch_size)
        p = self.patch_size
        gray = denormalize(images.float()).mean(1, keepdim=True)
        pad = self.kernels.shape[-1] // 2
        energies = []
        for octave in range(self.n_scales):
            g = F.avg_pool2d(gray, 2**octave) if octave else gray
            mode = "reflect" if min(g.shape[-2:]) > pad else "replicate"
            resp = F.conv2d(F.pad(g, (pad,) * 4, mode=mode), self.kernels)  # [B, 2*O, h, w]
            energy = resp.unflatten(1, (self.n_orient, 2)).pow(2).sum(2).sqrt()  # [B, O, h, w]
            if octave:
                energy = F.interpolate(energy, (h, w), mode="bilinear", align_corners=False)
            energies.append(energy)
        margin = (self.pool - p) // 2
        energy = F.pad(torch.cat(energies, 1), (margin,) * 4, mode="replicate")
        feats = torch.log(F.avg_pool2d(energy, self.pool, stride=p) + LOG_EPS)
        feats = feats - feats.mean(1, keepdim=True)
        return feats / feats.std(1, keepdim=True).clamp_min(1e-6)


DEMO_TRAIN_IMAGES, DEMO_VAL_IMAGES = 192, 48
DEMO_NEIGHBOURS = 8  # neighbour table width; positives drawn from ranks 1..DEMO_POSITIVE_RANKS
DEMO_POSITIVE_RANKS = 3


def demo_train_config(args: argparse.Namespace, out: Path) -> argparse.Namespace:
    """The ``unseg train`` settings of the demo run: STEGO, dense loss, fp32. The probe
    learning rate is 4x STEGO's: the run is 300 steps, not thousands."""
    return argparse.Namespace(
        recipe="stego", preset="demo", dataset="texture-mosaics", data_dir=None,
        backbone="filterbank", weights=None, random_init=False, out=out, resume=False,
        steps=args.steps, batch_size=8, lr=2e-3, probe_lr=2e-2, code_dim=16,
        extra_clusters=0, feature_samples=None, neg_samples=5, num_neighbors=DEMO_POSITIVE_RANKS,
        pointwise=True, self_weight=0.67, knn_weight=0.25, rand_weight=0.63, self_shift=0.08,
        knn_shift=0.02, rand_shift=1.0, loss_backend="auto", precision="fp32",
        device=args.device, seed=args.seed, workers=0, checkpoint_every=args.steps,
        log_every=10, tensorboard=False,
    )  # fmt: skip


@torch.no_grad()
def kmeans_baseline(
    train_feats: torch.Tensor,
    backbone: nn.Module,
    val: TextureMosaics,
    *,
    device: torch.device,
    seed: int,
) -> dict[str, float]:
    """mIoU and accuracy of spherical k-means (one cluster per class) fitted to the raw
    backbone features of the training images ``train_feats [N, C, h, w]``, each
    validation pixel assigned to the nearest centroid of its bilinearly upsampled feature;
    Hungarian-matched like the probe."""
    from unseg_kernels.ops.kmeans import kmeans
    from unseg_kernels.train.metrics import ConfusionMatrix, segmentation_scores

    points = train_feats.permute(0, 2, 3, 1).reshape(-1, train_feats.shape[1])
    centroids = kmeans(points, val.n_classes, metric="cosine", seed=seed).centroids
    cm = ConfusionMatrix(val.n_classes, val.n_classes)
    for batch in _loader(val):
        images = batch["img"].to(device)
        f = F.interpolate(backbone(images), images.shape[-2:], mode="bilinear")
        cos = torch.einsum("bchw,kc->bkhw", F.normalize(f, dim=1), centroids)
        cm.update(cos.argmax(1), batch["label"].to(device))
    scores = segmentation_scores(cm.matrix)
    return {"baseline_miou": scores.miou, "baseline_accuracy": scores.accuracy}


def _loader(dataset: torch.utils.data.Dataset, size: int = 32) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(dataset, batch_size=size)


def demo_command(args: argparse.Namespace) -> int:
    """``unseg demo``: k-means baseline, STEGO training, evaluation with the dense CRF.

    The baseline clusters the raw backbone features of the training mosaics with spherical
    k-means; the trained model's cluster probe is the minibatch spherical k-means STEGO
    learns on detached codes during training."""
    from unseg_kernels.train.evaluate import evaluate, write_results
    from unseg_kernels.train.loop import fit, resolve_device
    from unseg_kernels.train.monitor import peak_memory_mb
    from unseg_kernels.train.neighbours import nearest_neighbours, pool_features

    start = time.perf_counter()
    out = Path(args.out)
    if (out / "run").exists():
        raise FileExistsError(f"{out / 'run'} exists: remove it or choose another --out")
    device = resolve_device(args.device)
    train = TextureMosaics(DEMO_TRAIN_IMAGES, split="train", seed=args.seed)
    val = TextureMosaics(DEMO_VAL_IMAGES, split="val", seed=args.seed)
    backbone = FilterBankBackbone().to(device)
    print(f"data: {len(train)} training and {len(val)} validation mosaics of {train.class_names}")

    with torch.no_grad():  # one backbone pass feeds the baseline and the neighbour table
        train_feats = torch.cat([backbone(b["img"].to(device)) for b in _loader(train)])
    baseline = kmeans_baseline(train_feats, backbone, val, device=device, seed=args.seed)
    print(f"k-means on the raw features: mIoU {baseline['baseline_miou']:.1f}")
    table = nearest_neighbours(pool_features(train_feats), DEMO_NEIGHBOURS)
    cfg = demo_train_config(args, out / "run")
    result = fit(cfg, train, backbone, table.numpy())
    evaluation = evaluate(result.model, backbone, val, device=device, crf=True)
    m = evaluation.metrics
    metrics = {
        **baseline,
        "cluster_miou": m["cluster_miou"], "cluster_accuracy": m["cluster_accuracy"],
        "crf_miou": m["crf_miou"], "crf_accuracy": m["crf_accuracy"],
        "linear_miou": m["linear_miou"], "linear_accuracy": m["linear_accuracy"],
        "steps": result.step, "train_seconds": result.seconds,
        "eval_images_per_s": m["images_per_s"], "seconds": time.perf_counter() - start,
        "peak_memory_mb": peak_memory_mb(device), "device": str(device),
    }  # fmt: skip
    path = write_results(evaluation._replace(metrics=metrics), out)
    print(
        f"mIoU: k-means baseline {metrics['baseline_miou']:.1f}, trained cluster probe "
        f"{metrics['cluster_miou']:.1f}, + CRF {metrics['crf_miou']:.1f} "
        f"(linear probe {metrics['linear_miou']:.1f}); {metrics['seconds']:.0f} s"
    )
    print(f"wrote {path} and {out / 'predictions.png'}")
    return 0
