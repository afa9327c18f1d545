"""SmooSeg smoothness loss: forward + backward of one dense pair term per provider.

Providers: ``closed`` (the default closed form, O((N + M) C K) work), ``tiled`` (the fused
pair-loss sweep with SmooSeg's elementwise function: Triton on CUDA, the blocked torch sweep
on CPU; O(N M (C + 3K)) work), ``reference`` (materialises [B, H, W, I, J] twice).

The closed form reads each feature map once and does 2 (N + M) C K FLOPs per image: it is
bound by reading the features (B (N + M) C values), which is also what the backbone wrote,
so it stays negligible next to the backbone at any resolution.

Run: ``pytest benchmarks/bench_smooseg.py
--benchmark-json=benchmarks/results/smooseg-<device>.json``
"""

from __future__ import annotations

import os

import pytest
import torch

from unseg_kernels import smooseg_smooth_loss
from unseg_kernels.kernels import KIND_SMOOSEG
from unseg_kernels.ops._pair import pair_loss
from unseg_kernels.testing import synchronize

C, K, SHIFT = 384, 27, 0.48
HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
CPU_RAM_GB = 24


def reference_bytes(batch: int, tokens: int) -> float:
    """Peak of the materialising reference: about seven live [B, N, M] float32 tensors."""
    return 7 * 4.0 * batch * tokens**4


def case_pair_term(provider: str, tokens: int, batch: int, device: str = DEVICE):
    """A zero-argument callable running fwd+bwd of one dense SmooSeg pair term."""
    torch.manual_seed(0)
    f1 = torch.randn(batch, C, tokens, tokens, device=device)
    f2 = torch.randn(batch, C, tokens, tokens, device=device)
    a1 = (torch.randn(batch, K, tokens, tokens, device=device) * 3).softmax(1).requires_grad_()
    a2 = (torch.randn(batch, K, tokens, tokens, device=device) * 3).softmax(1).requires_grad_()
    sweep = "triton" if device == "cuda" else "torch"

    def run():
        a1.grad = a2.grad = None
        if provider == "tiled":
            loss = pair_loss(
                f1, f2, a1, a2, SHIFT, pointwise=True, kind=KIND_SMOOSEG, lo=0.0, hi=0.0,
                backend=sweep, deterministic=None, return_stats=False,
            )  # fmt: skip
        else:
            backend = "torch" if provider == "closed" else "reference"
            loss = smooseg_smooth_loss(f1, f2, a1, a2, SHIFT, backend=backend)
        loss.backward()
        synchronize(device)

    return run


@pytest.mark.parametrize("tokens", [28, 56, 112])
@pytest.mark.parametrize("batch", [4, 8])
@pytest.mark.parametrize("provider", ["closed", "tiled", "reference"])
def test_pair_term(benchmark, peak_rss_mb, provider, batch, tokens):
    if (
        provider == "reference"
        and DEVICE == "cpu"
        and reference_bytes(batch, tokens) > CPU_RAM_GB * 2**30 * 0.8
    ):
        pytest.skip(f"reference needs about {reference_bytes(batch, tokens) / 2**30:.0f} GB")
    if provider == "tiled" and DEVICE == "cpu" and tokens == 112:
        pytest.skip("the tiled sweep on 2 CPU cores takes minutes at 112x112 (see bench_stego)")
    fn = case_pair_term(provider, tokens, batch)
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    slow = provider != "closed" and tokens * tokens * batch > 28 * 28 * 8
    benchmark.pedantic(fn, rounds=3 if slow else 10, warmup_rounds=1)
    info = benchmark.extra_info
    info["loadavg"] = os.getloadavg()[0]  # the machine may be shared: read times with this
    info.update(provider=provider, tokens=tokens, batch=batch, C=C, K=K)
    if DEVICE == "cuda":
        info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        info["peak_rss_mb"] = peak_rss_mb(
            __file__, "case_pair_term", provider=provider, tokens=tokens, batch=batch
        )
