"""The ``unseg`` command line (also ``python -m unseg_kernels``).

Subcommands: ``demo`` (train and evaluate on embedded data, no download), ``train``
(STEGO or SmooSeg on a frozen ViT), ``eval`` (the unsupervised protocol on a checkpoint),
``precompute-knn`` (STEGO's neighbour table), ``crop`` (five-crop preprocessing, SPEC
section 7) and ``info`` (versions, build options, devices). Every subcommand takes
``--help`` and, except ``info``, ``--config FILE`` (TOML or YAML; keys are the flags).
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
from collections.abc import Callable, Sequence


def info() -> str:
    """Versions, the native build's options and the devices this process can see."""
    import torch

    import unseg_kernels
    from unseg_kernels import _env
    from unseg_kernels._native import native

    lines = [
        f"unseg_kernels {unseg_kernels.__version__}",
        f"python        {platform.python_version()} ({sys.executable})",
        f"torch         {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
    ]
    if _env.triton_available():
        import triton

        interp = ", interpreter on" if _env.triton_interpreter() else ""
        lines.append(f"triton        {triton.__version__}{interp}")
    else:
        lines.append("triton        not installed (Triton backends unavailable)")
    build = native().build_info()
    if build["with_cuda"]:
        rt = build["cuda_runtime_version"]
        cuda = f"with CUDA {rt // 1000}.{rt % 1000 // 10} for {build['cuda_architectures']}"
    else:
        cuda = "CPU only"
    lines.append(f"_C            {build['version']}, {cuda}, {build['cxx_compiler']}")
    lines.append(f"_C sees       {native().cuda_device_count()} CUDA device(s)")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        lines.append(
            f"device {i}      {p.name}, {p.total_memory / 2**30:.1f} GiB, sm_{p.major}{p.minor}"
        )
    if torch.cuda.device_count() == 0:
        lines.append("device        cpu only (torch sees no CUDA device)")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    print(info())
    return 0


def run_crop(args: argparse.Namespace) -> int:
    from unseg_kernels.train.config import save_config
    from unseg_kernels.train.crop import write_five_crops
    from unseg_kernels.train.datasets import build_dataset, cropped_root

    out = args.out or cropped_root(args.data_dir, args.dataset, "five", args.crop_ratio)
    for split in args.split:
        dataset = build_dataset(args.dataset, args.data_dir, split, n_classes=args.n_classes)
        n = write_five_crops(
            dataset,
            out,
            split,
            crop_ratio=args.crop_ratio,
            size=args.size or None,
            image_resample=args.image_resample,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=True,
        )
        print(f"{args.dataset} {split}: {len(dataset)} images -> {n} crops in {out}")
    save_config(args, out / "crop_config.yaml")
    return 0


def _command(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    """The command ``unseg_kernels.train.<module>.<name>``, imported only when it runs (so
    the command line builds without the training extra)."""

    def run(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(f"unseg_kernels.train.{module}"), name)(args)

    return run


def _no_arguments(p: argparse.ArgumentParser) -> None:
    """``info`` takes no flags."""


def _arguments(name: str) -> Callable[[argparse.ArgumentParser], None]:
    """The argument set ``unseg_kernels.train.args.add_<name>_arguments``."""

    def add(p: argparse.ArgumentParser) -> None:
        from unseg_kernels.train import args

        getattr(args, f"add_{name}_arguments")(p)

    return add


# name -> (one-line help, argument set, implementation)
COMMANDS: dict[str, tuple[str, Callable, Callable[[argparse.Namespace], int]]] = {
    "demo": (
        "train and evaluate STEGO on embedded texture mosaics (no download, no GPU needed)",
        _arguments("demo"),
        _command("demo", "demo_command"),
    ),
    "train": (
        "train STEGO or SmooSeg on a frozen ViT backbone",
        _arguments("train"),
        _command("loop", "train_command"),
    ),
    "eval": (
        "evaluate a checkpoint (SPEC section 6)",
        _arguments("eval"),
        _command("evaluate", "eval_command"),
    ),
    "precompute-knn": (
        "each image's nearest neighbours for STEGO's knn term",
        _arguments("precompute_knn"),
        _command("neighbours", "precompute_knn_command"),
    ),
    "crop": ("five-crop preprocessing of a dataset (SPEC section 7)", _arguments("crop"), run_crop),
    "info": ("print versions, build options and visible devices", _no_arguments, run_info),
}
# Errors a user can fix (bad data, missing files): one line on stderr and exit status 1.
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError)


def build_parser(prog: str = "unseg") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, add_arguments, _) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "unseg") -> int:
    """Parses ``argv`` (default ``sys.argv[1:]``), runs the subcommand, returns its status."""
    from unseg_kernels.train.config import parse_with_config

    args = parse_with_config(build_parser(prog), argv)
    try:
        return COMMANDS[args.command][2](args)
    except ModuleNotFoundError as e:
        print(
            f"{prog} {args.command}: error: {e}; install the training extra: "
            "pip install 'unseg-kernels[train]'",
            file=sys.stderr,
        )
        return 1
    except USER_ERRORS as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
