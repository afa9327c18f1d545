"""The training loop, evaluation and neighbour table end to end on a tiny generated folder
dataset with the demo's filter-bank backbone: commands, exact resume, backend agreement,
DistributedDataParallel on gloo, and the errors a user can make."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from unseg_kernels.cli import main
from unseg_kernels.train.checkpoint import load_checkpoint
from unseg_kernels.train.monitor import read_scalars
from unseg_kernels.train.neighbours import (
    TrainPairs,
    load_neighbours,
    nearest_neighbours,
    save_neighbours,
)
from unseg_kernels.train.sampling import SampleKey

N_IMAGES, SIZE, RES = 6, (40, 48), 32
BACKEND_AGREEMENT = 1e-4  # relative: the torch and reference losses differ by rounding only


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "imgs" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(N_IMAGES):
            labels = np.zeros(SIZE, np.uint8)
            labels[:, SIZE[1] // 2 :] = 1
            img = rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8)
            img[labels == 1] //= 4  # two visibly different halves
            Image.fromarray(img).save(root / "imgs" / split / f"{i}.png")
            Image.fromarray(labels).save(root / "labels" / split / f"{i}.png")
    knn = root / "nns.npz"
    assert main(["precompute-knn", *common(root), "--k", "4", "--out", str(knn)]) == 0
    return root


def common(root) -> list[str]:
    return [
        "--dataset", "folder", "--data-dir", str(root), "--n-classes", "2",
        "--crop-type", "none", "--res", str(RES), "--backbone", "filterbank",
    ]  # fmt: skip


def train_argv(root, out, *extra: str, recipe: str = "stego") -> list[str]:
    argv = ["train", "--recipe", recipe, *common(root), "--out", str(out), "--batch-size", "3"]
    argv += ["--code-dim", "8", "--log-every", "1", "--no-tensorboard", "--device", "cpu"]
    if recipe == "stego":
        argv += ["--knn-file", str(root / "nns.npz"), "--num-neighbors", "2"]
    return [*argv, *extra]


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_precompute_knn_table(data_dir):
    table = load_neighbours(data_dir / "nns.npz", N_IMAGES)
    assert table.shape == (N_IMAGES, 4)
    assert np.array_equal(table[:, 0], np.arange(N_IMAGES))  # itself first
    assert all(len(set(row)) == 4 for row in table.tolist())
    assert (data_dir / "nns.yaml").is_file()  # the resolved config beside the table
    with np.load(data_dir / "nns.npz") as f:
        assert str(f["backbone"]) == "filterbank" and int(f["res"]) == RES


def test_nearest_neighbours_puts_self_first_even_with_duplicates():
    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    table = nearest_neighbours(feats, k=3)
    assert table[:, 0].tolist() == [0, 1, 2, 3]
    assert table[0, 1] == 1 and table[1, 1] == 0  # the duplicate comes right after itself


def test_neighbour_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="unseg precompute-knn"):
        load_neighbours(tmp_path / "missing.npz", 4)
    save_neighbours(tmp_path / "t.npz", torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"expected \[4, >= 2\]"):
        load_neighbours(tmp_path / "t.npz", 4)
    with pytest.raises(ValueError, match="num_neighbors must be in"):
        TrainPairs([None] * 3, np.zeros((3, 2), np.int64), num_neighbors=2)


def test_train_pairs_draw_from_the_key():
    data = [{"img": torch.full((1,), float(i)), "label": torch.zeros(1)} for i in range(5)]
    table = np.array([[i, (i + 1) % 5, (i + 2) % 5, (i + 3) % 5] for i in range(5)])
    pairs = TrainPairs(data, table, num_neighbors=3)
    draws = {int(pairs[SampleKey(0, seed)]["img_pos"]) for seed in range(50)}
    assert draws == {1, 2, 3}  # ranks 1..3, never itself
    assert pairs[SampleKey(0, 7)]["img_pos"] == pairs[SampleKey(0, 7)]["img_pos"]


@pytest.mark.parametrize("recipe", ["stego", "smooseg"])
def test_train_writes_run_files_and_eval_scores_it(data_dir, tmp_path, recipe, capsys):
    out = tmp_path / "run"
    assert main(train_argv(data_dir, out, "--steps", "3", recipe=recipe)) == 0
    assert {"last.pt", "config.yaml", "scalars.csv"} <= {p.name for p in out.iterdir()}
    scalars = read_scalars(out / "scalars.csv")
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]
    assert all(np.isfinite(v) for _, v in scalars["loss"])
    assert main(["train", "--config", str(out / "config.yaml"), "--resume"]) == 0  # done: no-op

    ev = tmp_path / "eval"
    argv = ["eval", "--checkpoint", str(out / "last.pt"), "--res", str(RES), "--out", str(ev)]
    assert main([*argv, "--batch-size", "4", "--n-images", "2", "--device", "cpu"]) == 0
    metrics = json.loads((ev / "metrics.json").read_text())
    assert (ev / "eval_config.yaml").is_file()
    for kind in ("cluster", "crf", "linear", "linear_crf"):
        assert 0 <= metrics[f"{kind}_miou"] <= 100 and 0 <= metrics[f"{kind}_accuracy"] <= 100
    assert metrics["images"] == N_IMAGES and metrics["step"] == 3
    with Image.open(ev / "predictions.png") as grid:
        assert grid.size == (4 * RES, 2 * RES)


@pytest.mark.parametrize("recipe", ["stego", "smooseg"])
def test_resume_equals_uninterrupted(data_dir, tmp_path, recipe):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert main(train_argv(data_dir, whole, "--steps", "6", recipe=recipe)) == 0
    assert main(train_argv(data_dir, split, "--steps", "3", recipe=recipe)) == 0
    assert main(train_argv(data_dir, split, "--steps", "6", "--resume", recipe=recipe)) == 0
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(split / "last.pt")
    assert a["step"] == b["step"] == 6
    assert states_equal(a["modules"]["model"], b["modules"]["model"])  # EMA teacher included
    assert a["sampler"] == b["sampler"]
    assert (
        read_scalars(whole / "scalars.csv")["loss"] == read_scalars(split / "scalars.csv")["loss"]
    )


@pytest.mark.parametrize("recipe", ["stego", "smooseg"])
def test_bf16_autocast_trains(data_dir, tmp_path, recipe):
    out = tmp_path / "bf16"
    argv = train_argv(data_dir, out, "--steps", "2", "--precision", "bf16", recipe=recipe)
    assert main(argv) == 0
    assert all(np.isfinite(v) for _, v in read_scalars(out / "scalars.csv")["loss"])


def test_reference_and_fused_losses_train_alike(data_dir, tmp_path):
    runs = {}
    for backend in ("reference", "torch"):
        out = tmp_path / backend
        assert main(train_argv(data_dir, out, "--steps", "4", "--loss-backend", backend)) == 0
        runs[backend] = read_scalars(out / "scalars.csv")
    for name in ("corr_loss", "self_loss", "knn_loss", "rand_loss"):
        ref = np.array([v for _, v in runs["reference"][name]])
        fused = np.array([v for _, v in runs["torch"][name]])
        assert np.abs(fused - ref).max() <= BACKEND_AGREEMENT * np.abs(ref).max(), name


def test_run_errors(data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(train_argv(data_dir, out, "--steps", "1")) == 0
    assert main(train_argv(data_dir, out, "--steps", "2")) == 1
    assert "pass --resume" in capsys.readouterr().err
    assert main(train_argv(data_dir, out, "--steps", "2", "--lr", "0.1", "--resume")) == 1
    assert "lr: 0.0005 -> 0.1" in capsys.readouterr().err
    argv = train_argv(data_dir, tmp_path / "b", "--steps", "1")
    argv[argv.index("--knn-file") + 1] = str(tmp_path / "none.npz")
    assert main(argv) == 1
    assert "unseg precompute-knn" in capsys.readouterr().err
    assert main(train_argv(data_dir, tmp_path / "c", "--preset", "potsdam_vitb8")) == 1
    assert "not a stego preset" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_distributed_two_processes_on_gloo(data_dir, tmp_path):
    out = tmp_path / "ddp"
    argv = train_argv(data_dir, out, "--steps", "2", "--batch-size", "2")[1:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "unseg_kernels", "train", *argv]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = load_checkpoint(out / "last.pt")
    assert state["step"] == 2 and len(state["rng_by_rank"]) == 2
    assert state["sampler"]["world_size"] == 2 and state["sampler"]["consumed"] == 4
    # each rank drew its own dropout and loss samples
    assert not torch.equal(
        state["rng_by_rank"][0]["generators"]["loss"], state["rng_by_rank"][1]["generators"]["loss"]
    )
