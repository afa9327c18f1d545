"""Markdown tables and plots from the saved benchmark results.

    python benchmarks/report.py                  # print every table
    python benchmarks/report.py --update-readme  # rewrite README.md's tables in place
    python benchmarks/report.py --plot           # also write results/<name>.png (matplotlib)

A results file ``benchmarks/results/<name>.json`` (pytest-benchmark's JSON) feeds the README
block between ``<!-- table:<name> -->`` and ``<!-- /table -->``. Each benchmark function
gets a table whose rows are its parameters other than ``provider`` and whose columns are
the providers' median time and peak memory, so every number in the README comes from a
file in the repository.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
README = HERE.parent / "README.md"


def _device(machine: dict) -> str:
    gpus = machine.get("cuda_devices") or []
    if gpus:
        return gpus[0]
    cpu = machine.get("cpu", {}).get("brand_raw") or machine.get("processor") or "CPU"
    return f"{cpu}, {machine.get('torch_threads', '?')} threads"


def _fmt_time(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _cell(bench: dict | None) -> str:
    if bench is None:
        return "-"
    cell = _fmt_time(bench["stats"]["median"])
    info = bench.get("extra_info", {})
    mem = info.get("peak_mem_mb", info.get("peak_rss_mb"))
    if mem is not None:
        cell += f", {mem / 1024:.2f} GB" if mem >= 1024 else f", {mem:.0f} MB"
    if "per_image_ms" in info and info.get("images_per_call", 1) > 1:
        cell += f" ({info['per_image_ms']:.0f} ms per image)"
    if "speedup" in info:  # an interleaved comparison: ours vs the baseline, same load
        cell = (
            f"{info['ours_median_ms']:.0f} ms vs {info['pydensecrf_median_ms']:.0f} ms, "
            f"{info['speedup']:.1f}x"
        )
    if "tflops" in info:
        cell += f", {info['tflops']:.3g} TFLOP/s"
    if "gb_per_s" in info:
        cell += f", {info['gb_per_s']:.0f} GB/s"
    return cell


def table(path: Path) -> str:
    """Markdown tables (one per benchmark function) plus a provenance line for a file."""
    data = json.loads(path.read_text())
    machine, commit = data["machine_info"], data.get("commit_info", {})
    groups: dict[str, list[dict]] = defaultdict(list)
    for bench in data["benchmarks"]:
        # Unparametrised benchmarks of a file share one table, a column each.
        groups[bench["name"].split("[")[0] if bench["params"] else ""].append(bench)
    parts = []
    for name, benches in groups.items():
        params = [b["params"] or {"provider": b["name"]} for b in benches]
        keys = [k for k in params[0] if k != "provider"]
        providers = list(dict.fromkeys(p["provider"] for p in params))
        rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
        for bench, p in zip(benches, params, strict=True):
            rows[tuple(p[k] for k in keys)][p["provider"]] = bench
        lines = [
            *([f"`{name}`", ""] if name else []),
            "| " + " | ".join(keys + providers) + " |",
            "|" + "---|" * (len(keys) + len(providers)),
        ]
        for row_key in sorted(rows):
            cells = [str(v) for v in row_key] + [_cell(rows[row_key].get(p)) for p in providers]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    versions = f"torch {machine.get('torch')}, triton {machine.get('triton')}"
    provenance = (
        f"*{_device(machine)}; {versions}; commit {commit.get('id', '?')[:10]}; "
        f"median time, peak memory, rate; from `{path.relative_to(HERE.parent)}`.*"
    )
    return "\n\n".join(parts) + "\n\n" + provenance


def plot(path: Path) -> Path | None:
    """Median time per provider against the first parameter, one panel per benchmark
    function and one line per other setting; None when no benchmark has a parameter to
    plot against (e.g. single cases compared side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(path.read_text())
    panels: dict[str, tuple[str, dict[str, list[tuple]]]] = {}
    for bench in data["benchmarks"]:
        params = dict(bench["params"] or {})
        provider = params.pop("provider", None)
        if provider is None or not params:
            continue
        x_key = "tokens" if "tokens" in params else next(iter(params))
        x = params.pop(x_key)
        label = provider + "".join(f", {k}={v}" for k, v in params.items())
        function = bench["name"].split("[")[0]
        _, series = panels.setdefault(function, (x_key, defaultdict(list)))
        series[label].append((x, bench["stats"]["median"]))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, (function, (x_key, series)) in zip(axes[0], panels.items(), strict=True):
        for label, points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        ax.set_xlabel(x_key)
        ax.set_ylabel("median time (s)")
        ax.set_yscale("log")
        ax.set_title(f"{path.stem} {function} ({_device(data['machine_info'])})", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
    out = path.with_suffix(".png")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def update_readme(tables: dict[str, str]) -> list[str]:
    """Replaces each ``<!-- table:name -->`` block of README.md; returns the names filled."""
    text = README.read_text()
    filled = []
    for name, body in tables.items():
        block = rf"(<!-- table:{re.escape(name)} -->\n)(?:(?!<!-- table:).)*?(<!-- /table -->)"
        text, n = re.subn(
            block, lambda m, b=body: m.group(1) + b + "\n" + m.group(2), text, flags=re.S
        )
        if n:
            filled.append(name)
    README.write_text(text)
    return filled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--update-readme", action="store_true")
    parser.add_argument("--plot", action="store_true")
    args = parser.parse_args()
    tables = {path.stem: table(path) for path in sorted(RESULTS.glob("*.json"))}
    if args.update_readme:
        print("README tables updated:", ", ".join(update_readme(tables)) or "none")
    else:
        for name, body in tables.items():
            print(f"## {name}\n\n{body}\n")
    if args.plot:
        for path in sorted(RESULTS.glob("*.json")):
            out = plot(path)
            print(
                f"wrote {out.relative_to(HERE.parent)}" if out else f"{path.name}: nothing to plot"
            )


if __name__ == "__main__":
    main()
