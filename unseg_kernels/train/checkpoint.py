"""Checkpoints that resume a run exactly, written atomically.

A checkpoint is a plain dict of tensors and Python scalars (loaded back with
``torch.load(weights_only=True)``): module and optimiser state dicts, every random number
generator the run draws from (Python, NumPy, torch CPU and CUDA, and named
``torch.Generator`` objects), the data order (:class:`unseg_kernels.train.sampling
.InfiniteSampler` state) and any extra state such as an EMA teacher. Files are written to a
temporary name in the same folder, flushed to disk, then renamed over the target, so a run
killed mid-write leaves the previous checkpoint intact.

Example:
    >>> state = capture_state(step=100, modules={"head": head}, optimizers={"head": opt},
    ...                       generators={"loss": gen}, sampler=sampler)
    >>> save_checkpoint(state, run_dir / "last.pt")
    >>> restore_state(load_checkpoint(run_dir / "last.pt"), modules=..., optimizers=...)
"""

from __future__ import annotations

import io
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Writes ``data`` to ``path`` via a temporary file in the same folder and ``os.replace``
    (atomic on POSIX and Windows): readers see the old file or the new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(state: Mapping[str, Any], path: str | Path) -> Path:
    """``torch.save(state)`` written atomically to ``path``."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return atomic_write_bytes(buf.getvalue(), path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Loads a checkpoint with ``weights_only=True`` (no pickled code is ever run)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path} is not an unseg checkpoint (format {FORMAT_VERSION})")
    return state


def rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The state of every generator a run draws from, as tensors and scalars."""
    py_version, py_internal, py_gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 (the global RNG is what we save)
    state = {
        "python": {
            "version": py_version,
            "internal": torch.tensor(py_internal, dtype=torch.int64),
            "gauss": py_gauss,
        },
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(
    state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None
) -> None:
    """Restores what :func:`rng_state` captured (named generators must all be given)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state["generators"]
    given = dict(generators or {})
    if set(saved) != set(given):
        raise ValueError(
            f"checkpoint holds generators {sorted(saved)} but {sorted(given)} were given"
        )
    for name, g in given.items():
        g.set_state(saved[name])


def capture_state(
    *,
    step: int,
    modules: Mapping[str, torch.nn.Module] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    sampler: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything a resumed run needs, as one dict for :func:`save_checkpoint`.

    Args:
        step: optimiser steps completed.
        modules: state dicts to save (head, probes, an EMA teacher, ...).
        optimizers: objects with ``state_dict()`` (optimisers, LR schedulers, grad scalers).
        generators: named ``torch.Generator`` objects the run draws from.
        sampler: an object with ``state_dict()`` giving the data order (e.g.
            :class:`~unseg_kernels.train.sampling.InfiniteSampler`).
        extra: any further tensors / scalars (e.g. the resolved config).
    """
    return {
        "format": FORMAT_VERSION,
        "step": int(step),
        "modules": {k: m.state_dict() for k, m in (modules or {}).items()},
        "optimizers": {k: o.state_dict() for k, o in (optimizers or {}).items()},
        "rng": rng_state(generators),
        "sampler": sampler.state_dict() if sampler is not None else None,
        "extra": dict(extra or {}),
    }


def restore_state(
    state: Mapping[str, Any],
    *,
    modules: Mapping[str, torch.nn.Module] | None = None,
    optimizers: Mapping[str, Any] | None = None,
    generators: Mapping[str, torch.Generator] | None = None,
    sampler: Any = None,
) -> int:
    """Loads what :func:`capture_state` saved into the given objects (all names must
    match) and returns the step to continue from."""
    for kind, given in (("modules", modules), ("optimizers", optimizers)):
        saved = state[kind]
        if set(saved) != set(given or {}):
            raise ValueError(
                f"checkpoint holds {kind} {sorted(saved)} but {sorted(given or {})} were given"
            )
        for name, obj in (given or {}).items():
            obj.load_state_dict(saved[name])
    if sampler is not None:
        if state["sampler"] is None:
            raise ValueError("checkpoint holds no sampler state")
        sampler.load_state_dict(state["sampler"])
    set_rng_state(state["rng"], generators)
    return int(state["step"])
