"""Run infrastructure: config files, atomic checkpoints that resume exactly, the resumable
data order, scalar logging and the progress bar."""

from __future__ import annotations

import argparse
import csv
import os
import random

import numpy as np
import pytest
import torch

from unseg_kernels.train import checkpoint as ckpt_mod
from unseg_kernels.train.args import (
    add_crop_arguments,
    add_demo_arguments,
    add_eval_arguments,
    add_precompute_knn_arguments,
    add_train_arguments,
)
from unseg_kernels.train.checkpoint import (
    capture_state,
    load_checkpoint,
    restore_state,
    save_checkpoint,
)
from unseg_kernels.train.config import load_config_file, parse_with_config, save_config
from unseg_kernels.train.monitor import Progress, ScalarLogger, peak_memory_mb, read_scalars
from unseg_kernels.train.sampling import InfiniteSampler, mix_seed


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="unseg train")
    add_train_arguments(p)
    return p


TRAIN_ARGS = ["--dataset", "potsdam", "--data-dir", "/data", "--out", "/runs/a"]


# ---- config ------------------------------------------------------------------------------


def test_config_file_supplies_flags_and_cli_wins(tmp_path):
    (tmp_path / "run.toml").write_text(
        'dataset = "cityscapes"\ndata-dir = "/d"\nout = "/o"\nbatch_size = 8\nsteps = 100\n'
        'feature-samples = "dense"\nresume = true\ntensorboard = false\nlr = 1e-4\n'
    )
    args = parse_with_config(
        train_parser(), ["--config", str(tmp_path / "run.toml"), "--steps", "5"]
    )
    assert (args.dataset, str(args.data_dir), args.batch_size, args.steps) == (
        "cityscapes",
        "/d",
        8,
        5,
    )
    assert args.feature_samples is None and args.resume is True and args.tensorboard is False
    assert args.lr == 1e-4


def test_resolved_config_round_trips(tmp_path):
    args = parse_with_config(
        train_parser(), [*TRAIN_ARGS, "--feature-samples", "11", "--lr", "0.001"]
    )
    path = save_config(args, tmp_path / "config.yaml")
    saved = load_config_file(path)
    assert saved["feature_samples"] == 11 and saved["data_dir"] == "/data" and "config" not in saved
    again = parse_with_config(train_parser(), ["--config", str(path)])
    assert vars(again) == {**vars(args), "config": path}


def test_yaml_config_and_lists(tmp_path):
    p = argparse.ArgumentParser()
    add_crop_arguments(p)
    (tmp_path / "c.yml").write_text("dataset: folder\ndata_dir: /x\nn-classes: 3\nsplit: [val]\n")
    args = parse_with_config(p, ["--config", str(tmp_path / "c.yml")])
    assert args.split == ["val"] and args.n_classes == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ("bogus = 1\n", "unknown keys ['bogus']; valid keys: "),
        ('dataset = "voc"\n', "dataset must be one of"),
        ("steps = 0\n", "steps: must be a positive integer"),
        ('resume = "yes"\n', "resume must be true or false"),
        ("steps = [1, 2]\n", "takes one value"),
        ("[section]\nsteps = 1\n", "keys must be flags"),
        ("steps = \n", "cannot parse config file"),
    ],
    ids=["unknown", "choice", "type", "bool", "list", "table", "syntax"],
)
def test_bad_config_files(tmp_path, capsys, text, message):
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(SystemExit):
        parse_with_config(train_parser(), [*TRAIN_ARGS, "--config", str(tmp_path / "bad.toml")])
    assert message in capsys.readouterr().err


def test_config_file_errors(tmp_path):
    with pytest.raises(ValueError, match="must end in one of"):
        load_config_file(tmp_path / "c.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config_file(tmp_path / "c.toml")


@pytest.mark.parametrize(
    "add",
    [
        add_train_arguments,
        add_eval_arguments,
        add_demo_arguments,
        add_precompute_knn_arguments,
        add_crop_arguments,
    ],
)
def test_every_argument_set_has_help_and_a_config_option(add, capsys):
    p = argparse.ArgumentParser()
    add(p)
    with pytest.raises(SystemExit) as exit_info:
        p.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE" in out
    assert all(a.help for a in p._actions), [a.dest for a in p._actions if not a.help]


# ---- sampler -----------------------------------------------------------------------------


def take(sampler, n):
    it = iter(sampler)
    return [next(it) for _ in range(n)]


def test_sampler_epochs_are_permutations_and_resume_exactly():
    s = InfiniteSampler(7, seed=3)
    stream = take(s, 21)
    for e in range(3):
        assert sorted(k.index for k in stream[7 * e : 7 * e + 7]) == list(range(7))
    assert [k.index for k in stream[:7]] != [k.index for k in stream[7:14]]
    resumed = InfiniteSampler(7, seed=3)
    resumed.load_state_dict({**s.state_dict(), "consumed": 10})
    assert take(resumed, 11) == stream[10:]
    assert len({k.seed for k in stream}) == 21  # a fresh seed per position


def test_sampler_shards_the_same_stream():
    full = take(InfiniteSampler(5, seed=1), 12)
    r0 = take(InfiniteSampler(5, seed=1, rank=0, world_size=2), 6)
    r1 = take(InfiniteSampler(5, seed=1, rank=1, world_size=2), 6)
    assert r0 == full[0::2] and r1 == full[1::2]
    assert take(InfiniteSampler(3, shuffle=False), 4)[3].index == 0


def test_sampler_bad_input_and_mismatched_state():
    with pytest.raises(ValueError, match="size must be a positive int"):
        InfiniteSampler(0)
    with pytest.raises(ValueError, match="rank must be in"):
        InfiniteSampler(3, rank=2, world_size=2)
    with pytest.raises(ValueError, match="sampler state has size=4 but this sampler has size=3"):
        InfiniteSampler(3).load_state_dict({**InfiniteSampler(4).state_dict()})
    assert mix_seed(1, 2) != mix_seed(2, 1) and 0 <= mix_seed(5) < 2**62


# ---- checkpoints -------------------------------------------------------------------------


class TinyRun:
    """A run that draws from every RNG kind each step, so exact resumption is observable."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(4, 3)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=0.1)
        self.gen = torch.Generator().manual_seed(7)
        self.sampler = InfiniteSampler(5, seed=2)
        self.ema = torch.nn.Linear(4, 3)

    def step(self):
        key = next(iter(self.sampler))
        self.sampler.consumed += 1
        x = torch.randn(2, 4, generator=self.gen) + key.index + random.random() + np.random.rand()  # noqa: NPY002 (the legacy global RNG is saved)
        x = torch.nn.functional.dropout(x, 0.5)  # global torch RNG
        loss = self.model(x).pow(2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
                pe.mul_(0.9).add_(p, alpha=0.1)
        return loss.item()

    def objects(self):
        return dict(
            modules={"model": self.model, "ema": self.ema},
            optimizers={"opt": self.opt},
            generators={"data": self.gen},
            sampler=self.sampler,
        )


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    full = TinyRun()
    losses = [full.step() for _ in range(6)]

    random.seed(1)
    np.random.seed(1)  # noqa: NPY002
    first = TinyRun()
    head = [first.step() for _ in range(3)]
    save_checkpoint(
        capture_state(step=3, **first.objects(), extra={"note": "x"}), tmp_path / "c.pt"
    )
    random.seed(99)  # a new process starts from other states
    np.random.seed(99)  # noqa: NPY002
    torch.manual_seed(99)
    second = TinyRun()
    state = load_checkpoint(tmp_path / "c.pt")
    assert restore_state(state, **second.objects()) == 3 and state["extra"] == {"note": "x"}
    tail = [second.step() for _ in range(3)]
    assert head + tail == losses
    for a, b in zip(full.ema.parameters(), second.ema.parameters(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(capture_state(step=1), path)

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(capture_state(step=2), path)
    assert load_checkpoint(path)["step"] == 1  # the previous checkpoint is intact
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_checkpoint_mismatches_and_bad_files(tmp_path):
    run = TinyRun()
    save_checkpoint(capture_state(step=0, **run.objects()), tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    objs = run.objects()
    with pytest.raises(ValueError, match=r"holds modules \['ema', 'model'\] but \['model'\]"):
        restore_state(state, **{**objs, "modules": {"model": run.model}})
    with pytest.raises(ValueError, match="holds generators"):
        restore_state(state, **{**objs, "generators": {}})
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not an unseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


# ---- monitor -----------------------------------------------------------------------------


def test_scalar_logger_csv_and_resume_truncation(tmp_path):
    with ScalarLogger(tmp_path, tensorboard=False) as log:
        for step in (1, 2, 3, 4):
            log.log(step, loss=torch.tensor(1.0 / step), lr=0.5)
    with ScalarLogger(tmp_path, resume_step=2, tensorboard=False) as log:
        log.log(3, loss=9.0)
    scalars = read_scalars(tmp_path / "scalars.csv")
    assert scalars["loss"] == [(1, 1.0), (2, 0.5), (3, 9.0)]
    assert scalars["lr"] == [(1, 0.5), (2, 0.5)]
    with open(tmp_path / "scalars.csv", newline="") as f:
        assert next(csv.reader(f)) == ["step", "name", "value", "wall_time"]


def test_scalar_logger_tensorboard(tmp_path):
    with ScalarLogger(tmp_path, tensorboard=True) as log:
        log.log(1, loss=0.25)
    assert any((tmp_path / "tensorboard").iterdir())


def test_progress_shows_loss_rate_and_memory(capsys):
    with Progress(total=3, desc="t") as bar:
        for _ in range(3):
            bar.step(loss=0.5)
    err = capsys.readouterr().err
    assert "loss=0.5" in err and "peak_mem=" in err and "step/s" in err
    assert peak_memory_mb() > 0
