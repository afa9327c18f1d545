"""Compiles Triton kernels ahead of time for a GPU architecture, without a GPU.

Usage: python triton_aot.py MODULE KERNEL ARCH NUM_WARPS NUM_STAGES JSON_TYPES JSON_CONSTEXPRS

JSON_TYPES maps arguments to Triton types (e.g. {"f1": "*bf16", "N": "i32"}); arguments it
does not name are "*fp32" pointers. Prints the shared memory the kernel needs. Run with
TRITON_INTERPRET unset, so the kernels are real JIT functions.
"""

import importlib
import json
import sys

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

module, name, arch, warps, stages, types, constexprs = sys.argv[1:]
kernel = getattr(importlib.import_module(module), name)
while not isinstance(kernel, triton.runtime.jit.JITFunction):  # unwrap the autotuner
    kernel = kernel.fn
types, constexprs = json.loads(types), json.loads(constexprs)
signature = {}
for arg in kernel.arg_names:
    signature[arg] = "constexpr" if arg in constexprs else types.get(arg, "*fp32")
source = ASTSource(
    kernel, signature, constexprs={(kernel.arg_names.index(k),): v for k, v in constexprs.items()}
)
target = GPUTarget("cuda", int(arch), 128 if int(arch) >= 90 else 32)
compiled = triton.compile(source, target=target, options={"num_warps": int(warps), "num_stages": int(stages)})
print(compiled.metadata.shared)
