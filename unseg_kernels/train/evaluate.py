"""The unsupervised evaluation protocol (SPEC section 6) for a trained model, and
``unseg eval``.

Per batch: codes of the image and of its horizontal flip, averaged; upsampled bilinearly to
the image size; cluster log-probabilities (STEGO: ``log_softmax(2 cos)``) and the linear
probe's; optionally the batched dense CRF on both; argmax. Confusion matrices accumulate
over the whole split, then one global Hungarian matching maps clusters to classes (the
linear probe needs none). Writes ``metrics.json`` and a PNG grid (image, ground truth,
prediction, prediction after the CRF).

Example:
    >>> result = evaluate(model, backbone, val_dataset, crf=True)
    >>> result.metrics["crf_miou"]
"""

from __future__ import annotations

import argparse
import colorsys
import json
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from unseg_kernels.ops.crf import dense_crf
from unseg_kernels.train.metrics import ConfusionMatrix, map_clusters, segmentation_scores
from unseg_kernels.train.models import SegmentationModel
from unseg_kernels.train.monitor import peak_memory_mb
from unseg_kernels.train.transforms import denormalize

METRICS_NAME = "metrics.json"
GRID_NAME = "predictions.png"
IGNORE_COLOUR = (0, 0, 0)


class EvalResult(NamedTuple):
    """What :func:`evaluate` returns.

    Attributes:
        metrics: mIoU and accuracy (x100) per prediction kind (``cluster``, ``crf``,
            ``linear``, ``linear_crf``), image count, time, throughput and peak memory.
        grid: ``[rows, H, 4 * W, 3]`` uint8 (image, labels, prediction, prediction + CRF),
            or None when no rows were asked for.
    """

    metrics: dict[str, Any]
    grid: np.ndarray | None


@torch.no_grad()
def image_codes(
    model: SegmentationModel, backbone: torch.nn.Module, images: torch.Tensor, *, flip: bool
) -> torch.Tensor:
    """Codes at the image resolution ``[B, D, H, W]`` (float32), averaged with the
    horizontal flip's when ``flip``."""
    code = model.code(backbone(images)).float()
    if flip:
        code = (code + model.code(backbone(images.flip(-1))).float().flip(-1)) / 2
    return F.interpolate(code, images.shape[-2:], mode="bilinear", align_corners=False)


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """ImageNet-normalised ``[B, 3, H, W]`` -> uint8 ``[B, H, W, 3]`` (what the CRF reads)."""
    rgb = denormalize(images.float()).clamp(0, 1).mul(255).round()
    return rgb.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def palette(n: int) -> np.ndarray:
    """``[n + 1, 3]`` uint8 colours: n well-separated hues (golden-ratio steps, alternating
    saturation and value), then black for "ignore"."""
    colours = [
        colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.95 - 0.3 * (i % 2), 0.95 - 0.25 * (i % 3 == 2))
        for i in range(n)
    ]
    return (
        (np.array([*colours, IGNORE_COLOUR], dtype=np.float64).reshape(-1, 3) * 255)
        .round()
        .astype(np.uint8)
    )


def colourise(classes: torch.Tensor, n_classes: int) -> np.ndarray:
    """Class ids ``[H, W]`` (-1 = ignore / unmatched) -> uint8 ``[H, W, 3]``."""
    ids = classes.cpu().numpy()
    return palette(n_classes)[np.where((ids >= 0) & (ids < n_classes), ids, n_classes)]


@torch.no_grad()
def evaluate(
    model: SegmentationModel,
    backbone: torch.nn.Module,
    dataset: Dataset,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    crf: bool = True,
    crf_iters: int = 10,
    flip: bool = True,
    extra_clusters: str = "drop",
    n_images: int = 8,
    workers: int = 0,
    progress: bool = False,
) -> EvalResult:
    """Scores ``model`` on every image of ``dataset`` (SPEC section 6).

    Args:
        model: a trained recipe model.
        backbone: the frozen backbone it was trained on.
        dataset: yields ``{"img": [3, H, W] normalised, "label": [H, W]}`` (same sizes).
        device: where the backbone, head and CRF run.
        batch_size: images per batch.
        crf: also score predictions refined by :func:`unseg_kernels.dense_crf`.
        crf_iters: mean-field iterations.
        flip: average the codes of each image and its horizontal flip.
        extra_clusters: ``"drop"`` (STEGO) or ``"majority"``; see
            :func:`~unseg_kernels.train.metrics.segmentation_scores`.
        n_images: rows of the prediction grid (the first images).
        workers: DataLoader worker processes.
        progress: show a progress bar.
    """
    from tqdm import tqdm

    device = torch.device(device)
    model = model.to(device).eval()
    backbone = backbone.to(device).eval()
    n_classes, n_clusters = model.n_classes, model.n_clusters
    kinds = ("cluster", "linear") + (("crf", "linear_crf") if crf else ())
    confusion = {
        k: ConfusionMatrix(n_clusters if k in ("cluster", "crf") else n_classes, n_classes)
        for k in kinds
    }
    rows: list[tuple[torch.Tensor, ...]] = []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    start, count = time.perf_counter(), 0
    for batch in tqdm(loader, desc="eval", unit="batch", disable=not progress):
        images = batch["img"].to(device)
        labels = batch["label"].to(device)
        code = image_codes(model, backbone, images, flip=flip)
        scores = {"cluster": model.cluster_log_probs(code), "linear": model.linear_log_probs(code)}
        preds = {k: v.argmax(1) for k, v in scores.items()}
        rgb = to_uint8_rgb(images) if crf or len(rows) < n_images else None
        if crf:
            for k in ("cluster", "linear"):
                q = dense_crf(rgb, scores[k].exp().contiguous(), iters=crf_iters)
                preds["crf" if k == "cluster" else "linear_crf"] = q.argmax(1)
        for k in kinds:
            confusion[k].update(preds[k], labels)
        for i in range(min(len(images), n_images - len(rows))):
            rows.append((rgb[i].cpu(), labels[i].cpu(), preds["cluster"][i].cpu(),
                         preds["crf"][i].cpu() if crf else None))  # fmt: skip
        count += len(images)
    seconds = time.perf_counter() - start

    metrics: dict[str, Any] = {}
    matched = {}
    for k in kinds:
        s = segmentation_scores(
            confusion[k].matrix, extra_clusters=extra_clusters, match=not k.startswith("linear")
        )
        matched[k] = s.cluster_to_class
        metrics[f"{k}_miou"], metrics[f"{k}_accuracy"] = s.miou, s.accuracy
    metrics.update(
        images=count,
        seconds=seconds,
        images_per_s=count / seconds if seconds else float("nan"),
        peak_memory_mb=peak_memory_mb(device),
        crf=crf,
        flip=flip,
        extra_clusters=extra_clusters,
    )
    grid = None
    if rows:
        grid = np.stack([
            np.concatenate([
                rgb.numpy(),
                colourise(label, n_classes),
                colourise(map_clusters(pred, matched["cluster"]), n_classes),
                colourise(map_clusters(crf_pred, matched["crf"]), n_classes)
                if crf_pred is not None else np.zeros_like(rgb.numpy()),
            ], axis=1)
            for rgb, label, pred, crf_pred in rows
        ])  # fmt: skip
    return EvalResult(metrics, grid)


def write_results(result: EvalResult, out: str | Path, **extra: Any) -> Path:
    """Writes ``metrics.json`` (with ``extra`` keys) and the PNG grid to ``out``; returns the
    metrics path."""
    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / METRICS_NAME
    path.write_text(json.dumps({**result.metrics, **extra}, indent=2) + "\n")
    if result.grid is not None:
        Image.fromarray(np.concatenate(list(result.grid), axis=0)).save(out / GRID_NAME)
    return path


def eval_command(args: argparse.Namespace) -> int:
    """``unseg eval``: rebuilds the run a checkpoint came from and evaluates it."""
    from unseg_kernels.train.backbone import build_backbone
    from unseg_kernels.train.checkpoint import load_checkpoint
    from unseg_kernels.train.config import save_config
    from unseg_kernels.train.datasets import build_dataset
    from unseg_kernels.train.loop import build_model, resolve_device
    from unseg_kernels.train.transforms import SegTransform

    state = load_checkpoint(args.checkpoint)
    cfg = argparse.Namespace(
        **{k.replace("-", "_"): v for k, v in state["extra"]["config"].items()}
    )
    dataset_name = args.dataset or cfg.dataset
    data_dir = args.data_dir or cfg.data_dir
    dataset = build_dataset(
        dataset_name,
        data_dir,
        args.split,
        n_classes=args.n_classes or cfg.n_classes,
        transform=SegTransform(args.res),
    )
    weights = args.weights or cfg.weights
    backbone = build_backbone(cfg.backbone, weights=weights, random_init=cfg.random_init)
    model = build_model(cfg, backbone.embed_dim, dataset.n_classes)
    model.load_state_dict(state["modules"]["model"])
    result = evaluate(
        model,
        backbone,
        dataset,
        device=resolve_device(args.device),
        batch_size=args.batch_size,
        crf=args.crf,
        crf_iters=args.crf_iters,
        flip=args.flip,
        extra_clusters=args.extra_clusters_mode,
        n_images=args.n_images,
        workers=args.workers,
        progress=True,
    )
    out = args.out or Path(args.checkpoint).parent / f"eval_{dataset_name}_{args.split}"
    path = write_results(result, out, checkpoint=str(args.checkpoint), step=state["step"])
    save_config(args, Path(out) / "eval_config.yaml")
    print(json.dumps(result.metrics, indent=2))
    print(f"wrote {path}")
    return 0
