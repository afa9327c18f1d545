"""STEGO's nearest-neighbour table (SPEC section 7) and the training pairs drawn from it.

Each image is described by its backbone features averaged over space and L2-normalised;
:func:`nearest_neighbours` keeps each image's top-k by cosine (itself at rank 0) with
:func:`unseg_kernels.knn`, which never holds more than a block of the N x N similarities.
A training sample pairs an image with a neighbour drawn uniformly from ranks 1..N.

Example:
    >>> feats = pooled_features(backbone, dataset, batch_size=64)
    >>> table = nearest_neighbours(feats, k=30)  # [N, 30], table[:, 0] == arange(N)
    >>> save_neighbours(path, table, backbone="vit_small_patch8_224.dino")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from unseg_kernels.ops.knn import knn
from unseg_kernels.train.sampling import SampleKey


@torch.no_grad()
def pooled_features(
    backbone: torch.nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """Spatially averaged, L2-normalised backbone features of every image: ``[N, C]``
    float32 on ``device``. The dataset yields ``{"img": [3, H, W], ...}``."""
    from tqdm import tqdm

    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    batches = tqdm(loader, desc="features", unit="batch", disable=not progress)
    return torch.cat([pool_features(backbone(batch["img"].to(device))) for batch in batches])


def pool_features(feats: torch.Tensor) -> torch.Tensor:
    """Feature maps ``[B, C, H, W]`` -> image descriptors ``[B, C]``: the spatial mean,
    L2-normalised, in float32."""
    return torch.nn.functional.normalize(feats.float().mean((2, 3)), dim=1)


def nearest_neighbours(feats: torch.Tensor, k: int = 30) -> torch.Tensor:
    """Each row's ``k`` nearest rows by cosine, itself first: ``[N, k]`` int64 on CPU.

    Rank 0 is always the image itself, even when another image has identical features.
    """
    n = feats.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n:
        raise ValueError(f"k must be an int in [1, {n}] (the number of images), got {k!r}")
    self_index = torch.arange(n, device=feats.device)[:, None]
    if k == 1:
        return self_index.cpu()
    _, others = knn(feats, k=k - 1, metric="cosine", exclude_self=True)
    return torch.cat([self_index, others], 1).cpu()


def save_neighbours(path: str | Path, table: torch.Tensor, **meta: str | int | float) -> Path:
    """Writes ``table [N, k]`` and descriptive ``meta`` (backbone, dataset, ...) as ``.npz``
    (atomically)."""
    import io

    from unseg_kernels.train.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(
        buf, nns=table.cpu().numpy().astype(np.int64), **{k: np.array(v) for k, v in meta.items()}
    )
    return atomic_write_bytes(buf.getvalue(), path)


def load_neighbours(path: str | Path, n_images: int, *, min_k: int = 2) -> np.ndarray:
    """The table saved at ``path`` checked against a dataset of ``n_images``: ``[N, k]``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"nearest-neighbour file {path} does not exist; compute it with `unseg "
            "precompute-knn` using the same --dataset, --data-dir, --crop-type, --res and "
            "--backbone as the training run (or pass --knn-file)"
        )
    with np.load(path, allow_pickle=False) as data:
        if "nns" not in data:
            raise ValueError(f"{path} holds no 'nns' array (not written by unseg precompute-knn)")
        table = data["nns"]
    if table.ndim != 2 or table.shape[0] != n_images or table.shape[1] < min_k:
        raise ValueError(
            f"{path} holds a neighbour table of shape {table.shape}, expected [{n_images}, >= "
            f"{min_k}] for this dataset; recompute it with `unseg precompute-knn`"
        )
    if table.min() < 0 or table.max() >= n_images:
        raise ValueError(f"{path} holds indices outside [0, {n_images})")
    return table


def default_knn_path(
    data_dir: str | Path, backbone: str, dataset: str, split: str, crop_type: str, res: int
) -> Path:
    """Where ``unseg precompute-knn`` writes and ``unseg train`` looks by default."""
    name = f"nns_{backbone.replace('/', '_')}_{dataset}_{split}_{crop_type}_{res}.npz"
    return Path(data_dir) / "nns" / name


class TrainPairs(Dataset):
    """Training samples keyed by :class:`~unseg_kernels.train.sampling.SampleKey`: the
    image, its labels and, with a neighbour table, one neighbour drawn uniformly from ranks
    ``1..num_neighbors`` with the key's seed (so the draw does not depend on which loader
    worker made it).

    Args:
        dataset: yields ``{"img", "label", ...}`` for an int index.
        neighbours: ``[N, k]`` table (rank 0 = self), or None for no positive image.
        num_neighbors: ranks to draw from (STEGO: 7); needs ``k > num_neighbors``.
    """

    def __init__(
        self, dataset: Dataset, neighbours: np.ndarray | None = None, num_neighbors: int = 7
    ) -> None:
        if neighbours is not None and not 1 <= num_neighbors < neighbours.shape[1]:
            raise ValueError(
                f"num_neighbors must be in [1, {neighbours.shape[1] - 1}] for a neighbour table "
                f"of {neighbours.shape[1]} ranks, got {num_neighbors}"
            )
        self.dataset, self.neighbours, self.num_neighbors = dataset, neighbours, num_neighbors

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> Mapping[str, torch.Tensor]:
        sample = self.dataset[key.index]
        out = {"img": sample["img"], "label": sample["label"]}
        if self.neighbours is not None:
            rank = 1 + int(np.random.default_rng(key.seed).integers(self.num_neighbors))
            out["img_pos"] = self.dataset[int(self.neighbours[key.index, rank])]["img"]
        return out


def precompute_knn_command(args) -> int:
    """``unseg precompute-knn``: the neighbour table of a dataset split, in bounded memory."""
    from unseg_kernels.train.backbone import build_backbone
    from unseg_kernels.train.config import save_config
    from unseg_kernels.train.datasets import build_dataset
    from unseg_kernels.train.loop import resolve_device
    from unseg_kernels.train.transforms import SegTransform

    dataset = build_dataset(
        args.dataset,
        args.data_dir,
        args.split,
        crop_type=None if args.crop_type == "none" else args.crop_type,
        crop_ratio=args.crop_ratio,
        n_classes=args.n_classes,
        transform=SegTransform(args.res),
    )
    if args.k > len(dataset):
        raise ValueError(f"--k {args.k} is larger than the {len(dataset)} images of the split")
    device = resolve_device(args.device)
    backbone = build_backbone(args.backbone, weights=args.weights, random_init=args.random_init)
    feats = pooled_features(
        backbone.to(device),
        dataset,
        batch_size=args.batch_size,
        device=device,
        workers=args.workers,
        progress=True,
    )
    table = nearest_neighbours(feats, args.k)
    out = args.out or default_knn_path(
        args.data_dir, args.backbone, args.dataset, args.split, args.crop_type, args.res
    )
    save_neighbours(
        out, table, backbone=args.backbone, dataset=args.dataset, split=args.split, res=args.res
    )
    save_config(args, Path(out).with_suffix(".yaml"))
    print(f"{len(dataset)} images, top-{args.k} neighbours -> {out}")
    return 0
