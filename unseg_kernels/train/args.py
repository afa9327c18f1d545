"""Argument sets of the ``unseg`` subcommands. Each ``add_*_arguments(parser)`` defines one
command's flags; every flag is also a config-file key (see :mod:`unseg_kernels.train.config`).
Values a preset decides default to None and are filled from the preset when the run
resolves its config.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from unseg_kernels._validate import BACKENDS
from unseg_kernels.recipes import SMOOSEG_RECIPES, STEGO_RECIPES
from unseg_kernels.train.names import DATASETS, EXTRA_CLUSTER_MODES, RESAMPLE_NAMES

RECIPES = ("stego", "smooseg")
PRECISIONS = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
DEFAULT_BACKBONE = "vit_small_patch8_224.dino"


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def ratio(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def samples(text: str) -> int | None:
    """``--feature-samples``: a positive int, or ``dense`` for every token."""
    if str(text).lower() in ("dense", "none"):
        return None
    return positive_int(text)


def add_config_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML or YAML file whose keys are this command's flags (flags win)",
    )


def add_data_arguments(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=DATASETS, required=required, help="dataset layout")
    g.add_argument(
        "--data-dir",
        type=Path,
        required=required,
        metavar="DIR",
        help="STEGO's data root (holding cocostuff/, cityscapes/, potsdam/) or, for "
        "folder, the folder holding imgs/ and labels/",
    )
    g.add_argument(
        "--n-classes", type=positive_int, metavar="N", help="number of classes (folder only)"
    )
    g.add_argument(
        "--workers",
        type=nonnegative_int,
        metavar="N",
        default=0,
        help="DataLoader worker processes",
    )


def add_backbone_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("backbone")
    g.add_argument(
        "--backbone",
        default=DEFAULT_BACKBONE,
        metavar="NAME",
        help="timm ViT name (default %(default)s)",
    )
    g.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="local backbone weights (.safetensors or a torch.save file)",
    )
    g.add_argument(
        "--random-init",
        action="store_true",
        help="run without weights (random backbone; smoke tests only)",
    )


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("device")
    g.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when available")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="autocast dtype of the head and loss",
    )
    g.add_argument("--seed", type=int, metavar="N", default=0, help="seed of every random choice")


def add_crop_choice_arguments(g: argparse._ActionsContainer, *, res_help: str) -> None:
    """Which images a run reads: ``unseg crop`` output or the originals, and at what size."""
    g.add_argument(
        "--crop-type",
        choices=("five", "none"),
        default="five",
        help="read `unseg crop` output (five) or the original images (none)",
    )
    g.add_argument(
        "--crop-ratio", type=ratio, metavar="R", default=0.5, help="which crops (their ratio)"
    )
    g.add_argument("--res", type=positive_int, metavar="N", default=224, help=res_help)


def add_crop_arguments(p: argparse.ArgumentParser) -> None:
    """``unseg crop``: five-crop preprocessing (SPEC section 7)."""
    add_config_argument(p)
    add_data_arguments(p)
    p.add_argument(
        "--split", nargs="+", default=["train", "val"], metavar="SPLIT", help="splits to crop"
    )
    p.add_argument(
        "--crop-ratio", type=ratio, metavar="R", default=0.5, help="crop side / image side"
    )
    p.add_argument(
        "--size",
        type=nonnegative_int,
        metavar="N",
        default=224,
        help="shorter side of each crop after resizing (0 keeps the crop size)",
    )
    p.add_argument(
        "--image-resample",
        choices=RESAMPLE_NAMES,
        default="nearest",
        help="image resampling (STEGO's loaders use nearest)",
    )
    p.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output root (default DATA_DIR/cropped/<dataset>_five_crop_<ratio>)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing crops")


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``unseg train``: STEGO or SmooSeg on a frozen backbone."""
    add_config_argument(p)
    p.add_argument("--recipe", choices=RECIPES, default="stego", help="training objective")
    p.add_argument(
        "--preset",
        choices=sorted(set(STEGO_RECIPES) | set(SMOOSEG_RECIPES)),
        help="published hyperparameters of the recipe (default: from dataset and backbone)",
    )
    add_data_arguments(p)
    g = p.add_argument_group("data order and crops")
    add_crop_choice_arguments(g, res_help="training resolution (pixels)")
    g.add_argument(
        "--knn-file",
        type=Path,
        metavar="FILE",
        help="nearest neighbours from `unseg precompute-knn` (default: its output path)",
    )
    add_backbone_arguments(p)
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--steps", type=positive_int, metavar="N", help="optimiser steps (default: preset)"
    )
    g.add_argument(
        "--batch-size", type=positive_int, metavar="N", help="images per step (default: preset)"
    )
    g.add_argument("--lr", type=float, metavar="X", help="head learning rate (default: preset)")
    g.add_argument(
        "--probe-lr", type=float, metavar="X", default=5e-3, help="cluster and linear probe lr"
    )
    g.add_argument(
        "--code-dim", type=positive_int, metavar="N", help="head output channels (default: preset)"
    )
    g.add_argument(
        "--extra-clusters",
        type=nonnegative_int,
        metavar="N",
        default=0,
        help="cluster probe size beyond the class count",
    )
    g = p.add_argument_group("loss")
    g.add_argument(
        "--loss-backend", choices=BACKENDS, default="auto", help="correlation loss implementation"
    )
    g.add_argument(
        "--feature-samples",
        type=samples,
        default=None,
        metavar="S|dense",
        help="points per side sampled per image (STEGO: 11) or dense (default)",
    )
    g.add_argument(
        "--neg-samples", type=nonnegative_int, metavar="N", help="negatives per image (STEGO: 5)"
    )
    g.add_argument(
        "--num-neighbors",
        type=positive_int,
        metavar="N",
        help="knn positives drawn from ranks 1..N",
    )
    for term in ("self", "knn", "rand"):
        g.add_argument(f"--{term}-weight", type=float, help=f"STEGO {term} term weight")
        g.add_argument(f"--{term}-shift", type=float, help=f"STEGO {term} term shift")
    g.add_argument(
        "--pointwise",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pointwise centering of the feature correlations (default: preset)",
    )
    for term in ("intra", "inter"):
        g.add_argument(f"--{term}-shift", type=float, help=f"SmooSeg {term} term shift")
    g.add_argument(
        "--teacher-momentum", type=float, metavar="X", default=0.998, help="SmooSeg EMA alpha"
    )
    g.add_argument(
        "--prototype-lr", type=float, metavar="X", help="SmooSeg prototype lr (default: preset)"
    )
    g.add_argument("--temperature", type=float, metavar="X", default=0.1, help="SmooSeg tau")
    add_device_arguments(p)
    g = p.add_argument_group("run")
    g.add_argument("--out", type=Path, required=True, metavar="DIR", help="run folder")
    g.add_argument(
        "--checkpoint-every",
        type=positive_int,
        metavar="N",
        default=500,
        help="steps between checkpoints (a killed run loses at most this many)",
    )
    g.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    g.add_argument(
        "--log-every", type=positive_int, metavar="N", default=10, help="steps between scalar rows"
    )
    g.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also log to TensorBoard (default: when installed)",
    )


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    """``unseg eval``: the unsupervised protocol (SPEC section 6) on a trained checkpoint."""
    add_config_argument(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        required=True,
        metavar="FILE",
        help="a checkpoint written by `unseg train`",
    )
    add_data_arguments(p, required=False)
    p.add_argument("--split", default="val", help="split to evaluate")
    p.add_argument(
        "--res", type=positive_int, metavar="N", default=320, help="evaluation resolution"
    )
    p.add_argument(
        "--crf",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="refine with the dense CRF",
    )
    p.add_argument(
        "--crf-iters", type=positive_int, metavar="N", default=10, help="mean-field iterations"
    )
    p.add_argument(
        "--flip",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="average codes of the image and its horizontal flip",
    )
    p.add_argument(
        "--extra-clusters-mode",
        choices=EXTRA_CLUSTER_MODES,
        default="drop",
        help="drop (STEGO) or majority-vote mapping of extra clusters",
    )
    p.add_argument(
        "--batch-size", type=positive_int, metavar="N", default=16, help="images per batch"
    )
    p.add_argument(
        "--weights",
        type=Path,
        metavar="FILE",
        help="backbone weights (default: the path the checkpoint's run used)",
    )
    p.add_argument(
        "--n-images", type=nonnegative_int, metavar="N", default=8, help="rows of the PNG grid"
    )
    p.add_argument("--out", type=Path, metavar="DIR", help="where metrics.json and the grid go")
    add_device_arguments(p)


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    """``unseg demo``: train and evaluate on the embedded texture mosaics."""
    add_config_argument(p)
    p.add_argument("--steps", type=positive_int, metavar="N", default=300, help="training steps")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("unseg-demo"),
        metavar="DIR",
        help="where metrics.json, the PNG grid and the run files go",
    )
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when available")
    p.add_argument("--seed", type=int, metavar="N", default=0, help="seed of the data and the run")


def add_precompute_knn_arguments(p: argparse.ArgumentParser) -> None:
    """``unseg precompute-knn``: each image's nearest neighbours by pooled backbone features."""
    add_config_argument(p)
    add_data_arguments(p)
    p.add_argument("--split", default="train", help="split whose neighbours to compute")
    add_crop_choice_arguments(p, res_help="backbone input resolution (as `unseg train --res`)")
    p.add_argument(
        "--k", type=positive_int, metavar="N", default=30, help="neighbours kept (self included)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, metavar="N", default=64, help="images per batch"
    )
    add_backbone_arguments(p)
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto = cuda when available")
    p.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="default DATA_DIR/nns/nns_<backbone>_<dataset>_<split>_<crop>_<res>.npz",
    )
