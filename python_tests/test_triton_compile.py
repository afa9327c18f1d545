"""The Triton kernels compile for Ampere (sm_80) and Hopper (sm_90) GPUs.

Tests elsewhere run the kernels through the interpreter when no GPU is present; the
interpreter does not catch what only the GPU compiler rejects (layouts, dot shapes, shared
memory). This compiles representative variants ahead of time, without a GPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "triton_aot.py"
PAIR = "unseg_kernels.kernels.triton_pair_loss"
CORR = "unseg_kernels.kernels.triton_correlation"
# Shared memory per block: A100 164 KiB, H100 228 KiB (less 1 KiB reserved).
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}


def scalar_types(ints, floats=()):
    return {**{n: "i32" for n in ints}, **{n: "fp32" for n in floats}}


PAIR_STRIDES = "s_f1b s_f1c s_f1n s_f2b s_f2c s_f2m s_c1b s_c1d s_c1n s_c2b s_c2d s_c2m".split()
PAIR_SCALARS = scalar_types(["N", "M", "C", "D", "n_part", *PAIR_STRIDES], ["lo", "hi"])
CORR_SCALARS = scalar_types("N M C s_ab s_ac s_an s_bb s_bc s_bm".split())


def pair_flags(kind, prec, **extra):
    flags = dict(
        KIND=kind, NEED_DP=True, ATOMIC_DQ=True, STATS=True, HIST_BINS=64, D_PAD=128,
        PREC_F=prec, PREC_C=prec, BLOCK_N=64, BLOCK_M=64, BLOCK_C=64,
    )  # fmt: skip
    flags.update(extra)
    return flags


def operands(dtype, names):
    return {n: f"*{dtype}" for n in names}


CASES = [
    pytest.param(
        PAIR,
        "_pair_loss_fwd_kernel",
        90,
        8,
        "bf16",
        pair_flags(0, "tf32"),
        id="fwd-stego-bf16-sm90",
    ),
    pytest.param(
        PAIR,
        "_pair_loss_fwd_kernel",
        80,
        8,
        "fp16",
        pair_flags(1, "tf32", ATOMIC_DQ=False, STATS=False),
        id="fwd-smooseg-fp16-sm80",
    ),
    pytest.param(
        PAIR,
        "_pair_loss_fwd_kernel",
        90,
        4,
        "fp32",
        pair_flags(0, "ieee", BLOCK_C=32, D_PAD=32),
        id="fwd-stego-fp32ieee-sm90",
    ),
    pytest.param(
        PAIR,
        "_pair_loss_dq_kernel",
        90,
        8,
        "bf16",
        {k: v for k, v in pair_flags(0, "tf32").items() if k != "HIST_BINS"},
        id="dq-bf16-sm90",
    ),
    pytest.param(
        PAIR,
        "_pair_loss_dq_kernel",
        80,
        4,
        "fp32",
        {k: v for k, v in pair_flags(0, "tf32", BLOCK_C=32).items() if k != "HIST_BINS"},
        id="dq-fp32tf32-sm80",
    ),
    pytest.param(
        CORR,
        "_correlation_kernel",
        90,
        4,
        "bf16",
        dict(NORMALIZE=True, PREC="tf32", BLOCK_N=64, BLOCK_M=128, BLOCK_C=64),
        id="corr-bf16-sm90",
    ),
    pytest.param(
        CORR,
        "_correlation_kernel",
        80,
        4,
        "fp32",
        dict(NORMALIZE=False, PREC="ieee", BLOCK_N=64, BLOCK_M=64, BLOCK_C=32),
        id="corr-fp32ieee-sm80",
    ),
]


@pytest.mark.triton
@pytest.mark.slow
@pytest.mark.parametrize("module, kernel, arch, warps, dtype, constexprs", CASES)
def test_compiles_for_gpu(tmp_path, module, kernel, arch, warps, dtype, constexprs):
    if module == PAIR:
        types = {**PAIR_SCALARS, **operands(dtype, ["f1", "f2", "c1", "c2"]), "hist_part": "*i32"}
    else:
        types = {**CORR_SCALARS, **operands(dtype, ["a", "b", "out"])}
    cmd = [
        sys.executable,
        str(SCRIPT),
        module,
        kernel,
        str(arch),
        str(warps),
        "3",
        json.dumps(types),
        json.dumps(constexprs),
    ]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    shared = int(out.stdout.strip().splitlines()[0])
    assert shared <= SMEM_LIMIT[arch], f"needs {shared} bytes of shared memory"
