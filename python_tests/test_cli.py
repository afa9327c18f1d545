"""The ``unseg`` command line: dispatch, ``--help``, ``info`` and ``crop``."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from unseg_kernels.cli import COMMANDS, build_parser, main

OPTIONAL = ("PIL", "scipy", "timm", "yaml", "tqdm", "safetensors", "skimage", "tensorboard")


def make_folder(root, n=2, size=(12, 16)):
    for split in ("train", "val"):
        for i in range(n):
            (root / "imgs" / split).mkdir(parents=True, exist_ok=True)
            (root / "labels" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(
                root / "imgs" / split / f"{i}.png"
            )
            Image.fromarray(np.full(size, i % 2, np.uint8)).save(
                root / "labels" / split / f"{i}.png"
            )


def test_only_implemented_commands_are_registered():
    assert set(COMMANDS) == {"demo", "train", "eval", "precompute-knn", "crop", "info"}


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in COMMANDS)])
def test_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "usage: unseg" in capsys.readouterr().out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unseg_kernels ") and "torch" in out


def test_python_dash_m_runs_info_without_the_train_extra(tmp_path):
    # ``python -m unseg_kernels info`` with every optional dependency made unimportable; run
    # from tmp_path so the installed package is imported rather than the source tree.
    code = (
        "import runpy, sys\n"
        f"for name in {OPTIONAL!r}: sys.modules[name] = None\n"
        "sys.argv = ['unseg_kernels', 'info']\n"
        "runpy.run_module('unseg_kernels', run_name='__main__')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("unseg_kernels ")


def test_missing_train_extra_is_explained(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "unseg_kernels.train.crop", None)
    assert main(["crop", "--dataset", "folder", "--data-dir", str(tmp_path)]) == 1
    assert "pip install 'unseg-kernels[train]'" in capsys.readouterr().err


def test_crop_writes_stego_layout_and_config(tmp_path, capsys):
    make_folder(tmp_path)
    assert (
        main(
            [
                "crop",
                "--dataset",
                "folder",
                "--data-dir",
                str(tmp_path),
                "--n-classes",
                "2",
                "--size",
                "4",
            ]
        )
        == 0
    )
    out = tmp_path / "cropped" / "folder_five_crop_0.5"
    for split in ("train", "val"):
        assert sorted(p.name for p in (out / "img" / split).iterdir()) == [
            f"{i}.jpg" for i in range(10)
        ]
        with Image.open(out / "label" / split / "9.png") as img:
            label = np.asarray(img)
        assert label.shape == (4, 5) and (label == 2).all()  # class 1 stored + 1
    config = yaml.safe_load((out / "crop_config.yaml").read_text())
    assert config["n-classes"] == 2 and config["split"] == ["train", "val"]
    assert "2 images -> 10 crops" in capsys.readouterr().out


def test_crop_from_a_config_file(tmp_path):
    make_folder(tmp_path, n=1)
    (tmp_path / "crop.toml").write_text(
        f'dataset = "folder"\ndata-dir = "{tmp_path}"\nn-classes = 2\nsplit = ["val"]\n'
        f'size = 0\nout = "{tmp_path / "o"}"\n'
    )
    assert main(["crop", "--config", str(tmp_path / "crop.toml")]) == 0
    with Image.open(tmp_path / "o" / "img" / "val" / "4.jpg") as crop:
        assert crop.size == (8, 6)  # not resized
    assert not (tmp_path / "o" / "img" / "train").exists()


def test_crop_errors_are_one_line(tmp_path, capsys):
    assert main(["crop", "--dataset", "potsdam", "--data-dir", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("unseg crop: error: potsdam: data_dir") and err.count("\n") == 1
    make_folder(tmp_path, n=1)
    argv = ["crop", "--dataset", "folder", "--data-dir", str(tmp_path), "--n-classes", "2"]
    assert main(argv) == 0
    assert main(argv) == 1
    assert "already exist; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["crop", "--dataset", "voc", "--data-dir", "x"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'voc'" in capsys.readouterr().err
