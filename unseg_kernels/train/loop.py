"""The training loop of ``unseg train`` (and of the demo): a frozen backbone, a recipe's
model (:mod:`unseg_kernels.train.models`), Adam, optional autocast, DistributedDataParallel
under ``torchrun``, scalar logging, and checkpoints that resume exactly.

A run is a pure function of its config: the data order comes from a seeded
:class:`~unseg_kernels.train.sampling.InfiniteSampler`, neighbour draws from each sample's
key, dropout from the global generator and point sampling / negatives from a dedicated
generator, all seeded from ``--seed`` and rank and all saved in every checkpoint (each
rank's generators separately). ``--resume`` therefore continues a stopped run exactly as if
it had never stopped.

Example:
    >>> cfg = resolve_train_config(args)  # presets filled in
    >>> result = fit(cfg, dataset, backbone, neighbours)
    >>> result.checkpoint  # run_dir / "last.pt"
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset

from unseg_kernels.nn import SmooSegLoss, StegoLoss
from unseg_kernels.recipes import SMOOSEG_RECIPES, STEGO_RECIPES
from unseg_kernels.train.checkpoint import (
    capture_state,
    load_checkpoint,
    restore_state,
    save_checkpoint,
)
from unseg_kernels.train.config import resolved_config, save_config
from unseg_kernels.train.models import SegmentationModel, SmooSegModel, StegoModel
from unseg_kernels.train.monitor import Progress, ScalarLogger, peak_memory_mb
from unseg_kernels.train.neighbours import TrainPairs
from unseg_kernels.train.sampling import InfiniteSampler, mix_seed

CHECKPOINT_NAME = "last.pt"
CONFIG_NAME = "config.yaml"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# Settings a resumed run may change: they do not alter what is computed.
RESUMABLE_CHANGES = frozenset(
    {"steps", "resume", "checkpoint-every", "log-every", "workers", "tensorboard", "config"}
)
# Seed streams derived from --seed (see mix_seed): data order, loss sampling, dropout, init.
SEED_LOSS, SEED_GLOBAL, SEED_INIT = 2, 3, 4


class Distributed(NamedTuple):
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Distributed:
    """Joins the process group ``torchrun`` describes in the environment (NCCL on CUDA,
    gloo on CPU); a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Distributed(0, 1, 0)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ["LOCAL_RANK"]))


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when available; under ``torchrun`` each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was given but torch sees no CUDA device")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def default_preset(recipe: str, dataset: str, backbone: str) -> str:
    """The published configuration closest to a run: by dataset, then backbone size."""
    size = "vitb8" if "base" in backbone else "vits8"
    table = STEGO_RECIPES if recipe == "stego" else SMOOSEG_RECIPES
    name = f"{'cocostuff27' if dataset == 'folder' else dataset}_{size}"
    if name in table:
        return name
    return next(k for k in sorted(table) if k.startswith(name.split("_")[0]))


def resolve_train_config(args: argparse.Namespace) -> argparse.Namespace:
    """A copy of ``args`` with every preset-decided value (None) filled from the preset."""
    cfg = argparse.Namespace(**vars(args))
    table = STEGO_RECIPES if cfg.recipe == "stego" else SMOOSEG_RECIPES
    cfg.preset = cfg.preset or default_preset(cfg.recipe, cfg.dataset, cfg.backbone)
    if cfg.preset not in table:
        raise ValueError(
            f"--preset {cfg.preset!r} is not a {cfg.recipe} preset; choose from {sorted(table)}"
        )
    preset = table[cfg.preset]
    if cfg.recipe == "stego":
        values = {
            "steps": preset.steps, "batch_size": preset.batch_size, "lr": preset.lr,
            "code_dim": preset.code_dim, "neg_samples": preset.neg_samples,
            "num_neighbors": preset.num_neighbors, "pointwise": preset.pointwise,
            **{f"{t}_{kind}": getattr(preset, f"{t}_{kind}")
               for t in ("self", "knn", "rand") for kind in ("weight", "shift")},
        }  # fmt: skip
    else:
        values = {
            "steps": preset.steps, "batch_size": preset.batch_size, "lr": preset.lr_projector,
            "code_dim": preset.dim, "intra_shift": preset.intra_shift,
            "inter_shift": preset.inter_shift, "prototype_lr": preset.lr_prototypes,
            "pointwise": True,
        }  # fmt: skip
    for key, value in values.items():
        if getattr(cfg, key, None) is None:
            setattr(cfg, key, value)
    return cfg


def build_model(cfg: argparse.Namespace, in_dim: int, n_classes: int) -> SegmentationModel:
    """The recipe's model for a resolved config (see :func:`resolve_train_config`)."""
    if cfg.recipe == "stego":
        loss = StegoLoss(
            feature_samples=cfg.feature_samples,
            neg_samples=cfg.neg_samples,
            pointwise=cfg.pointwise,
            backend=cfg.loss_backend,
            **{f"{t}_{kind}": getattr(cfg, f"{t}_{kind}")
               for t in ("self", "knn", "rand") for kind in ("weight", "shift")},
        )  # fmt: skip
        return StegoModel(in_dim, cfg.code_dim, n_classes, loss, cfg.extra_clusters)
    loss = SmooSegLoss(
        intra_shift=cfg.intra_shift,
        inter_shift=cfg.inter_shift,
        pointwise=cfg.pointwise,
        backend=cfg.loss_backend,
    )
    return SmooSegModel(
        in_dim,
        cfg.code_dim,
        n_classes,
        loss,
        tau=cfg.temperature,
        ema=cfg.teacher_momentum,
        prototype_lr=cfg.prototype_lr,
    )


class TrainResult(NamedTuple):
    """What :func:`fit` returns: the trained model (unwrapped, on the run's device), the
    steps done, the last checkpoint and the wall time of this process's steps."""

    model: SegmentationModel
    step: int
    checkpoint: Path
    seconds: float


def _check_resumable(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    changed = sorted(
        k for k in set(saved) | set(current)
        if k not in RESUMABLE_CHANGES and saved.get(k) != current.get(k)
    )  # fmt: skip
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"--resume: {path} was written with other settings ({details}); resume with the "
            "same settings or start a new run in another --out"
        )


def _gather(obj: Any, ctx: Distributed) -> list[Any]:
    if ctx.world_size == 1:
        return [obj]
    out = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def fit(
    cfg: argparse.Namespace,
    dataset: Dataset,
    backbone: torch.nn.Module,
    neighbours: np.ndarray | None = None,
    *,
    n_classes: int | None = None,
) -> TrainResult:
    """Trains ``cfg.recipe`` on ``dataset`` for ``cfg.steps`` steps in ``cfg.out``.

    Args:
        cfg: a config resolved by :func:`resolve_train_config` (the ``unseg train`` flags).
        dataset: yields ``{"img": [3, H, W], "label": [H, W]}`` for an int index.
        backbone: frozen, maps images to features ``[B, C, H/p, W/p]``, has ``embed_dim``.
        neighbours: STEGO's ``[N, k]`` neighbour table (None for SmooSeg).
        n_classes: classes of the labels (default ``dataset.n_classes``).
    """
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    ctx = init_distributed(device)
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT_NAME
    config = resolved_config(cfg)
    if not cfg.resume and ckpt_path.exists():
        raise FileExistsError(
            f"{ckpt_path} exists: pass --resume to continue that run, or choose another --out"
        )
    if cfg.recipe == "stego" and neighbours is None:
        raise ValueError("the stego recipe needs a nearest-neighbour table (neighbours)")
    n_classes = n_classes or dataset.n_classes

    torch.manual_seed(mix_seed(cfg.seed, SEED_INIT))  # the same initial model on every rank
    model = build_model(cfg, backbone.embed_dim, n_classes).to(device)
    backbone = backbone.to(device)
    optimizers = {
        name: torch.optim.Adam(groups)
        for name, groups in model.parameter_groups(cfg.lr, cfg.probe_lr).items()
    }
    autocast_dtype = AUTOCAST_DTYPES.get(cfg.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    sampler = InfiniteSampler(len(dataset), seed=cfg.seed, rank=ctx.rank, world_size=ctx.world_size)
    loss_gen = torch.Generator(device).manual_seed(mix_seed(cfg.seed, SEED_LOSS, ctx.rank))
    torch.manual_seed(mix_seed(cfg.seed, SEED_GLOBAL, ctx.rank))  # dropout
    np.random.seed(mix_seed(cfg.seed, SEED_GLOBAL, ctx.rank) % 2**32)  # noqa: NPY002
    state_objects = dict(
        modules={"model": model},
        optimizers={**optimizers, "scaler": scaler},
        generators={"loss": loss_gen},
        sampler=sampler,
    )
    step = 0
    if cfg.resume:
        state = load_checkpoint(ckpt_path, map_location="cpu")
        _check_resumable(state["extra"]["config"], config, ckpt_path)
        if len(state["rng_by_rank"]) != ctx.world_size:
            raise ValueError(
                f"--resume: {ckpt_path} was written by {len(state['rng_by_rank'])} processes, "
                f"this run has {ctx.world_size}"
            )
        state["rng"] = state["rng_by_rank"][ctx.rank]
        step = restore_state(state, **state_objects)
    if ctx.main:
        save_config(cfg, out / CONFIG_NAME)

    trained = model
    if ctx.world_size > 1:
        ids = [device.index] if device.type == "cuda" else None
        trained = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    pairs = TrainPairs(dataset, neighbours, getattr(cfg, "num_neighbors", None) or 1)
    loader = DataLoader(
        pairs,
        batch_size=cfg.batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator(),  # leaves the global generator (saved state) untouched
    )
    autocast = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    logger = (
        ScalarLogger(out, resume_step=step if cfg.resume else None, tensorboard=cfg.tensorboard)
        if ctx.main
        else None
    )
    bar = Progress(cfg.steps, initial=step, device=device, disable=not ctx.main)
    start, start_step, shown = time.perf_counter(), step, {}
    try:
        model.train()
        for batch in itertools.islice(loader, max(0, cfg.steps - step)):
            images = batch["img"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            with autocast:
                feats = backbone(images)
                feats_pos = backbone(batch["img_pos"].to(device)) if "img_pos" in batch else None
                losses = trained(feats, feats_pos, labels, generator=loss_gen)
            for opt in optimizers.values():
                opt.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            for opt in optimizers.values():
                scaler.step(opt)
            scaler.update()
            model.after_step()
            step += 1
            sampler.consumed += cfg.batch_size

            if step % cfg.log_every == 0 or step == cfg.steps:
                shown = {k: v.item() for k, v in losses.items()}
                if logger is not None:
                    rate = (step - start_step) / (time.perf_counter() - start)
                    logger.log(step, **shown, steps_per_s=rate, peak_mem_mb=peak_memory_mb(device))
            bar.step(**({"loss": shown["loss"]} if shown else {}))
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                _save(ckpt_path, step, state_objects, config, ctx)
    finally:
        bar.close()
        if logger is not None:
            logger.close()
    return TrainResult(model, step, ckpt_path, time.perf_counter() - start)


def _save(
    path: Path, step: int, objects: dict[str, Any], config: dict[str, Any], ctx: Distributed
) -> None:
    """Rank 0 writes the checkpoint with every rank's generators; all ranks wait for it."""
    state = capture_state(step=step, extra={"config": config}, **objects)
    rngs = _gather(state.pop("rng"), ctx)
    if ctx.main:
        save_checkpoint({**state, "rng_by_rank": rngs}, path)
    if ctx.world_size > 1:
        dist.barrier()


def train_command(args: argparse.Namespace) -> int:
    """``unseg train``: builds the dataset, backbone and neighbour table, then :func:`fit`."""
    from unseg_kernels.train.backbone import build_backbone
    from unseg_kernels.train.datasets import build_dataset
    from unseg_kernels.train.neighbours import default_knn_path, load_neighbours
    from unseg_kernels.train.transforms import SegTransform

    cfg = resolve_train_config(args)
    crop_type = None if cfg.crop_type == "none" else cfg.crop_type
    dataset = build_dataset(
        cfg.dataset,
        cfg.data_dir,
        "train",
        crop_type=crop_type,
        crop_ratio=cfg.crop_ratio,
        n_classes=cfg.n_classes,
        transform=SegTransform(cfg.res),
    )
    backbone = build_backbone(cfg.backbone, weights=cfg.weights, random_init=cfg.random_init)
    neighbours = None
    if cfg.recipe == "stego":
        path = cfg.knn_file or default_knn_path(
            cfg.data_dir, cfg.backbone, cfg.dataset, "train", cfg.crop_type, cfg.res
        )
        neighbours = load_neighbours(path, len(dataset), min_k=cfg.num_neighbors + 1)
    try:
        result = fit(cfg, dataset, backbone, neighbours)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(f"trained {result.step} steps in {result.seconds:.1f} s; checkpoint {result.checkpoint}")
    return 0
