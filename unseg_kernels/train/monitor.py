"""What a run shows and records while it trains: scalars to a CSV file (always) and to
TensorBoard (when it is installed), and a tqdm progress bar with the loss, steps/s and the
peak memory.

Example:
    >>> with ScalarLogger(run_dir) as log, Progress(total=1000) as bar:
    ...     for step in range(1000):
    ...         log.log(step + 1, loss=loss.item())
    ...         bar.step(loss=loss.item())
"""

from __future__ import annotations

import csv
import importlib.util
import resource
import sys
import time
from pathlib import Path

import torch

CSV_NAME = "scalars.csv"
CSV_FIELDS = ("step", "name", "value", "wall_time")


def peak_memory_mb(device: torch.device | str = "cpu") -> float:
    """Peak memory so far: the CUDA caching allocator's peak on a CUDA device, else this
    process's peak resident set size."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


class ScalarLogger:
    """Appends ``(step, name, value, wall_time)`` rows to ``run_dir/scalars.csv`` and mirrors
    them to TensorBoard when ``torch.utils.tensorboard`` can be used.

    Args:
        run_dir: the run's folder.
        resume_step: when resuming from a checkpoint at this step, rows logged after it (by
            the run that was stopped) are dropped so the file matches an uninterrupted run.
        tensorboard: True requires TensorBoard, False never uses it, None uses it if
            installed.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        resume_step: int | None = None,
        tensorboard: bool | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / CSV_NAME
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        new = not self.path.exists()
        self._file = self.path.open("a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(CSV_FIELDS)
        available = importlib.util.find_spec("tensorboard") is not None
        if tensorboard and not available:
            raise ValueError(
                "tensorboard=True needs the tensorboard package (pip install tensorboard)"
            )
        self._tb = None
        if available and tensorboard is not False:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.run_dir / "tensorboard"), purge_step=resume_step
            )

    def _truncate_after(self, step: int) -> None:
        with self.path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def log(self, step: int, **scalars: float | torch.Tensor) -> None:
        """Records each ``name=value`` at ``step``."""
        now = time.time()
        for name, value in scalars.items():
            value = float(value.item() if isinstance(value, torch.Tensor) else value)
            self._csv.writerow((int(step), name, repr(value), f"{now:.3f}"))
            if self._tb is not None:
                self._tb.add_scalar(name, value, int(step), walltime=now)
        self._file.flush()

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self) -> ScalarLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_scalars(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``name -> [(step, value)]`` from a ``scalars.csv``."""
    out: dict[str, list[tuple[int, float]]] = {}
    with Path(path).open(newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["name"], []).append((int(row["step"]), float(row["value"])))
    return out


class Progress:
    """A tqdm bar over training steps showing the loss, steps/s and the peak memory.

    Args:
        total: steps of the whole run.
        initial: steps already done (when resuming).
        device: whose peak memory to show.
        disable: no bar (e.g. on ranks other than 0); None lets tqdm decide (no TTY).
    """

    def __init__(
        self,
        total: int,
        *,
        initial: int = 0,
        device: torch.device | str = "cpu",
        desc: str = "train",
        disable: bool | None = False,
    ) -> None:
        from tqdm import tqdm

        self.device = torch.device(device)
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="step",
            disable=disable,
            dynamic_ncols=True,
        )

    def step(self, n: int = 1, **scalars: float) -> None:
        """Advances ``n`` steps and shows ``scalars`` (e.g. ``loss=``) with the peak memory."""
        shown = {k: f"{float(v):.4g}" for k, v in scalars.items()}
        shown["peak_mem"] = f"{peak_memory_mb(self.device):.0f}MB"
        self.bar.set_postfix(shown, refresh=False)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
