"""STEGO correlation loss: forward + backward of one dense pair term, and the full
7-term objective, per provider.

Providers: ``reference`` (materialises [B, H, W, I, J], as STEGO does), ``torch`` (blocked
rows), ``triton`` (fused kernels, CUDA only), ``pykeops`` (a LazyTensor reduction, where
pykeops is installed).

Work per image pair (N = M = tokens): the feature dot costs 2*N*M*C FLOPs, the code dot and
the two gradient dots 2*N*M*D each, so fwd+bwd is ``2*N*M*(C + 3*D)`` useful FLOPs (the
Triton kernel pads D to a power of two, so it executes somewhat more). That is compute
bound: each tile reads (BLOCK_N + BLOCK_M) * (C + D) values for BLOCK_N * BLOCK_M *
2 * (C + 3D) FLOPs. ``extra_info["tflops"]`` reports useful FLOPs per second, to compare
with the device's measured dense matmul rate.

Run: ``pytest benchmarks/bench_stego.py
--benchmark-json=benchmarks/results/stego-<device>.json``
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch

from unseg_kernels import stego_corr_loss
from unseg_kernels.nn import StegoLoss
from unseg_kernels.testing import synchronize

C, D, SHIFT = 384, 70, 0.18
HAS_CUDA = torch.cuda.is_available()
HAS_KEOPS = importlib.util.find_spec("pykeops") is not None
DEVICE = "cuda" if HAS_CUDA else "cpu"
CPU_RAM_GB = 24  # the CI/development machine; cases whose estimate exceeds it are skipped


def pair_flops(batch: int, tokens: int) -> float:
    n = tokens * tokens
    return 2.0 * batch * n * n * (C + 3 * D)


def reference_bytes(batch: int, tokens: int) -> float:
    """Peak of the materialising reference: about seven live [B, N, M] float32 tensors."""
    return 7 * 4.0 * batch * tokens**4


def keops_loss(f1, f2, c1, c2, shift):
    """The same pair term as one KeOps reduction (pointwise centering in closed form)."""
    from pykeops.torch import LazyTensor

    def rows(t):  # [B, K, H, W] -> normalised [B, N, K]
        return torch.nn.functional.normalize(t.flatten(2), dim=1, eps=1e-10).transpose(1, 2)

    u, v, p, q = rows(f1), rows(f2), rows(c1), rows(c2)
    vbar = v.mean(1, keepdim=True)
    m = (u.mean(1, keepdim=True) * vbar).sum(-1).mean()
    offset = (m - shift) - (u * vbar).sum(-1, keepdim=True)  # [B, N, 1]
    u_i, v_j = LazyTensor(u[:, :, None, :]), LazyTensor(v[:, None, :, :])
    p_i, q_j = LazyTensor(p[:, :, None, :]), LazyTensor(q[:, None, :, :])
    off_i = LazyTensor(offset[:, :, None, :])
    elem = -((p_i | q_j).relu()) * ((u_i | v_j) + off_i)
    return elem.sum(2).sum() / (u.shape[0] * u.shape[1] * v.shape[1])


def _maps(tokens: int, batch: int, device: str, dtype: str):
    """Two feature maps and two code maps (the codes require grad), seeded."""
    torch.manual_seed(0)
    kw = dict(device=device, dtype=getattr(torch, dtype))
    f1 = torch.randn(batch, C, tokens, tokens, **kw)
    f2 = torch.randn(batch, C, tokens, tokens, **kw)
    c1 = torch.randn(batch, D, tokens, tokens, **kw, requires_grad=True)
    c2 = torch.randn(batch, D, tokens, tokens, **kw, requires_grad=True)
    return f1, f2, c1, c2


def case_pair_term(
    provider: str, tokens: int, batch: int, device: str = DEVICE, dtype: str = "float32"
):
    """A zero-argument callable running fwd+bwd of one dense pair term."""
    f1, f2, c1, c2 = _maps(tokens, batch, device, dtype)

    def run():
        c1.grad = c2.grad = None
        if provider == "pykeops":
            loss = keops_loss(f1, f2, c1, c2, SHIFT)
        else:
            loss = stego_corr_loss(f1, f2, c1, c2, SHIFT, backend=provider)
        loss.backward()
        synchronize(device)

    return run


def case_full_objective(
    provider: str, tokens: int, batch: int, device: str = DEVICE, dtype: str = "float32"
):
    """A zero-argument callable running fwd+bwd of StegoLoss, dense, 7 pair terms."""
    feats, feats_pos, code, code_pos = _maps(tokens, batch, device, dtype)
    loss_fn = StegoLoss(feature_samples=None, backend=provider)

    def run():
        code.grad = code_pos.grad = None
        loss_fn(feats, feats_pos, code, code_pos).loss.backward()
        synchronize(device)

    return run


def _measure(benchmark, peak_rss_mb, case, provider, tokens, batch, dtype, terms, rounds):
    if (
        provider == "reference"
        and DEVICE == "cpu"
        and reference_bytes(batch, tokens) > CPU_RAM_GB * 2**30 * 0.8
    ):
        pytest.skip(f"reference needs about {reference_bytes(batch, tokens) / 2**30:.0f} GB")
    if provider == "pykeops" and not HAS_KEOPS:
        pytest.skip("pykeops is not installed")
    if provider == "pykeops" and DEVICE == "cpu" and batch * tokens**4 > 56**4:
        pytest.skip("pykeops on CPU takes minutes per call at this size")
    if provider == "triton" and not HAS_CUDA:
        pytest.skip("the Triton backend is benchmarked on CUDA only")
    fn = case(provider, tokens, batch, DEVICE, dtype)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(fn, rounds=rounds, warmup_rounds=1)
    info = benchmark.extra_info
    info["loadavg"] = os.getloadavg()[0]  # the machine may be shared: read times with this
    info.update(provider=provider, tokens=tokens, batch=batch, dtype=dtype, C=C, D=D, terms=terms)
    info["tflops"] = terms * pair_flops(batch, tokens) / benchmark.stats["median"] / 1e12
    if DEVICE == "cuda":
        info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        # what any implementation must hold: the four maps and the two code gradients
        size = getattr(torch, dtype).itemsize * batch * tokens**2
        info["inputs_and_grads_mb"] = size * (2 * C + 4 * D) / 2**20
    else:
        info["peak_rss_mb"] = peak_rss_mb(
            __file__, case.__name__, provider=provider, tokens=tokens, batch=batch, dtype=dtype
        )


CPU_PROVIDERS = ["reference", "torch", "pykeops"]
GPU_PROVIDERS = ["reference", "torch", "triton", "pykeops"]


@pytest.mark.parametrize("tokens", [28, 56, 112])
@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("provider", GPU_PROVIDERS if HAS_CUDA else CPU_PROVIDERS)
def test_pair_term(benchmark, peak_rss_mb, provider, batch, tokens):
    slow = DEVICE == "cpu" and (tokens * tokens * batch > 56 * 56 or provider == "pykeops")
    rounds = 3 if slow else 5
    _measure(benchmark, peak_rss_mb, case_pair_term, provider, tokens, batch, "float32", 1, rounds)


@pytest.mark.skipif(not HAS_CUDA, reason="GPU case")
@pytest.mark.parametrize("tokens", [56, 112])
@pytest.mark.parametrize("provider", ["triton"])
def test_pair_term_bf16(benchmark, peak_rss_mb, provider, tokens):
    _measure(benchmark, peak_rss_mb, case_pair_term, provider, tokens, 16, "bfloat16", 1, 10)


@pytest.mark.skipif(not HAS_CUDA, reason="GPU case: 7 dense terms at B=16")
@pytest.mark.parametrize("tokens", [28, 56])
@pytest.mark.parametrize("provider", ["reference", "torch", "triton"])
def test_full_objective(benchmark, peak_rss_mb, provider, tokens):
    _measure(benchmark, peak_rss_mb, case_full_objective, provider, tokens, 16, "float32", 7, 10)
