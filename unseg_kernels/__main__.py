"""The ``unseg`` command (also ``python -m unseg_kernels``)."""

from __future__ import annotations

import argparse
import platform
import sys


def info() -> str:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="unseg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print versions, build options and visible devices")
    args = parser.parse_args(argv)
    if args.command == "info":
        print(info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
