"""Compiles a Triton kernel ahead of time for a GPU architecture, without a GPU.

    python benchmarks/triton_aot.py MODULE KERNEL ARCH WARPS STAGES TYPES CONSTEXPRS [--ptxas]

TYPES is a JSON object mapping arguments to Triton types (e.g. {"f1": "*bf16", "N": "i32"});
arguments it does not name are "*fp32" pointers. CONSTEXPRS is a JSON object of the
constexpr values. Prints the shared memory the kernel needs in bytes; with --ptxas, also
ptxas's register and spill report for the generated PTX. Run with TRITON_INTERPRET unset,
so the kernels are JIT functions. The tests use it to check that every kernel compiles for
Ampere and Hopper; the tuning notes use its reports.
"""

import glob
import importlib
import json
import os
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource


def compile_kernel(module, name, arch, warps, stages, types, constexprs):
    kernel = getattr(importlib.import_module(module), name)
    while not isinstance(kernel, triton.runtime.jit.JITFunction):  # unwrap the autotuner
        kernel = kernel.fn
    signature = {
        arg: "constexpr" if arg in constexprs else types.get(arg, "*fp32")
        for arg in kernel.arg_names
    }
    index = {(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
    target = GPUTarget("cuda", arch, 128 if arch >= 90 else 32)
    options = {"num_warps": warps, "num_stages": stages}
    return triton.compile(
        ASTSource(kernel, signature, constexprs=index), target=target, options=options
    )


def ptxas_report(ptx: str, arch: int) -> str:
    """Registers and spills, from the newest ptxas bundled with Triton."""
    import triton.backends.nvidia as nvidia

    ptxas = sorted(glob.glob(os.path.join(os.path.dirname(nvidia.__file__), "bin", "ptxas*")))[-1]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = "sm_90a" if arch == 90 else f"sm_{arch}"
    out = subprocess.run(
        [ptxas, "-v", "--gpu-name", gpu, f.name, "-o", os.devnull], capture_output=True, text=True
    )
    os.unlink(f.name)
    lines = [
        line.split(": ", 1)[-1]
        for line in out.stderr.splitlines()
        if "spill" in line or "registers" in line
    ]
    return "; ".join(lines)


if __name__ == "__main__":
    module, name, arch, warps, stages, types, constexprs = sys.argv[1:8]
    compiled = compile_kernel(
        module, name, int(arch), int(warps), int(stages), json.loads(types), json.loads(constexprs)
    )
    print(compiled.metadata.shared)
    if "--ptxas" in sys.argv[8:]:
        print(ptxas_report(compiled.asm["ptx"], int(arch)))
