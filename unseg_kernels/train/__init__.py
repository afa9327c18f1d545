"""Training and evaluation infrastructure for STEGO / SmooSeg runs on frozen ViT features.

| module | what it holds |
|---|---|
| :mod:`~unseg_kernels.train.datasets` | STEGO's dataset layouts and a generic folder |
| :mod:`~unseg_kernels.train.transforms` | resize / crop / normalise without torchvision |
| :mod:`~unseg_kernels.train.crop` | five-crop preprocessing (``unseg crop``) |
| :mod:`~unseg_kernels.train.demo` | the embedded texture-mosaic dataset and demo backbone |
| :mod:`~unseg_kernels.train.backbone` | frozen timm ViT from a local weights file |
| :mod:`~unseg_kernels.train.heads` | STEGO head, SmooSeg projector |
| :mod:`~unseg_kernels.train.metrics` | confusion matrix, Hungarian matching, mIoU / accuracy |
| :mod:`~unseg_kernels.train.sampling` | resumable, shardable data order |
| :mod:`~unseg_kernels.train.checkpoint` | atomic checkpoints with every RNG state |
| :mod:`~unseg_kernels.train.config` | TOML / YAML config files keyed by CLI flags |
| :mod:`~unseg_kernels.train.monitor` | CSV + TensorBoard scalars, tqdm progress |
| :mod:`~unseg_kernels.train.args` | argument sets of the ``unseg`` subcommands |

Needs the ``train`` extra (``pip install "unseg-kernels[train]"``). Names are imported
lazily so ``unseg info`` runs without it.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_dataset": "datasets",
    "cropped_root": "datasets",
    "DATASETS": "datasets",
    "SegmentationDataset": "datasets",
    "CocoStuff27": "datasets",
    "Cityscapes": "datasets",
    "Potsdam": "datasets",
    "FolderDataset": "datasets",
    "CroppedDataset": "datasets",
    "SegTransform": "transforms",
    "five_crops": "crop",
    "write_five_crops": "crop",
    "ViTBackbone": "backbone",
    "read_backbone_weights": "backbone",
    "load_backbone_weights": "backbone",
    "HeadOutput": "heads",
    "StegoHead": "heads",
    "SmooSegProjector": "heads",
    "ConfusionMatrix": "metrics",
    "SegmentationScores": "metrics",
    "confusion_matrix": "metrics",
    "hungarian": "metrics",
    "segmentation_scores": "metrics",
    "map_clusters": "metrics",
    "InfiniteSampler": "sampling",
    "SampleKey": "sampling",
    "capture_state": "checkpoint",
    "restore_state": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "parse_with_config": "config",
    "save_config": "config",
    "ScalarLogger": "monitor",
    "Progress": "monitor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
