"""A full STEGO training step and the evaluation pipeline, end to end.

``test_train_step``: one optimiser step of the STEGO recipe on a frozen ViT-S/8 (random
weights: the speed is the same), dense loss (every token, 7 pair terms), head, cluster and
linear probes, Adam; the image and its neighbour both go through the backbone. Providers:
``fused`` (the library's loss, ``backend="auto"``) and ``reference`` (the materialising
loss, what STEGO's code computes). The loss is O(B N^2 (C + D)) work against the
backbone's O(B N C^2 + B N^2 C) per layer, so at 28x28 tokens the backbone dominates and at
56x56 the reference loss's [B, N, N] tensors start to.

``test_largest_resolution`` (GPU only): the largest resolution, in steps of 224 px, at which
each provider's training step still fits in device memory, and its time there.

``test_eval``: the evaluation pipeline of ``unseg eval`` (flip averaging, cluster and linear
probe, optionally the batched dense CRF on both) on photographs at 320 px, per image.

Run: ``pytest benchmarks/bench_train.py --benchmark-json=benchmarks/results/train-<device>.json``
"""

from __future__ import annotations

import gc
import os

import pytest
import torch

from unseg_kernels.nn import StegoLoss
from unseg_kernels.testing import synchronize

pytest.importorskip("timm")

from unseg_kernels.train.backbone import ViTBackbone
from unseg_kernels.train.evaluate import evaluate
from unseg_kernels.train.models import StegoModel

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
BACKBONE = "vit_small_patch8_224.dino"
CODE_DIM, N_CLASSES = 70, 27
TRAIN_BATCH = 16 if HAS_CUDA else 2
EVAL_BATCH, EVAL_RES, EVAL_IMAGES = (16, 320, 64) if HAS_CUDA else (2, 320, 4)


def _backbone(device: str) -> ViTBackbone:
    torch.manual_seed(0)
    return ViTBackbone(BACKBONE, random_init=True).to(device)


def case_train_step(provider: str, res: int, batch: int = TRAIN_BATCH, device: str = DEVICE):
    """A zero-argument callable running one full training step."""
    backbone = _backbone(device)
    backend = "reference" if provider == "reference" else "auto"
    loss = StegoLoss.from_recipe("cocostuff27_vits8", feature_samples=None, backend=backend)
    model = StegoModel(backbone.embed_dim, CODE_DIM, N_CLASSES, loss).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    images = torch.randn(batch, 3, res, res, device=device)
    pos = torch.randn(batch, 3, res, res, device=device)
    labels = torch.randint(0, N_CLASSES, (batch, res, res), device=device)

    def run():
        losses = model(backbone(images), backbone(pos), labels)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        synchronize(device)

    return run


class _Photos(torch.utils.data.Dataset):
    """scikit-image's photographs at ``res`` px (random labels): the CRF's lattice size
    depends on the image, and noise images would inflate it several times."""

    def __init__(self, n: int, res: int) -> None:
        import skimage.data
        from PIL import Image

        from unseg_kernels.train.transforms import SegTransform

        names = ("astronaut", "coffee", "chelsea", "rocket")
        g = torch.Generator().manual_seed(0)
        self.samples = []
        for i in range(n):
            img = Image.fromarray(getattr(skimage.data, names[i % len(names)])())
            labels = torch.randint(0, N_CLASSES, (img.height, img.width), generator=g)
            image, label = SegTransform(res)(img, labels.numpy())
            self.samples.append({"img": image, "label": label})

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.samples[i]


def case_eval(provider: str, device: str = DEVICE):
    """A zero-argument callable evaluating ``EVAL_IMAGES`` images (``provider``: crf or
    no_crf)."""
    backbone = _backbone(device)
    model = StegoModel(backbone.embed_dim, CODE_DIM, N_CLASSES, StegoLoss()).to(device)
    data = _Photos(EVAL_IMAGES, EVAL_RES)

    def run():
        evaluate(model, backbone, data, device=device, batch_size=EVAL_BATCH,
                 crf=provider == "crf", n_images=0)  # fmt: skip
        synchronize(device)

    return run


def _record(benchmark, peak_rss_mb, case: str, **params) -> None:
    info = benchmark.extra_info
    info["loadavg"] = os.getloadavg()[0]  # the machine may be shared: read times with this
    info.update(params, device=DEVICE)
    if HAS_CUDA:
        info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        info["peak_rss_mb"] = peak_rss_mb(__file__, case, **params)


@pytest.mark.parametrize("res", [224, 448])
@pytest.mark.parametrize("provider", ["fused", "reference"])
def test_train_step(benchmark, peak_rss_mb, provider, res):
    fn = case_train_step(provider, res)
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(fn, rounds=3 if res > 224 and not HAS_CUDA else 5, warmup_rounds=1)
    benchmark.extra_info["steps_per_s"] = 1 / benchmark.stats.stats.median
    _record(benchmark, peak_rss_mb, "case_train_step", provider=provider, res=res)
    benchmark.extra_info["batch"] = TRAIN_BATCH


@pytest.mark.skipif(not HAS_CUDA, reason="GPU case: the largest resolution that trains")
@pytest.mark.parametrize("provider", ["fused", "reference"])
def test_largest_resolution(benchmark, provider):
    """Raises the resolution by 224 px until a step runs out of device memory, then times
    the largest that fit (``extra_info["largest_res"]``)."""
    largest = None
    for res in range(224, 224 * 8 + 1, 224):
        try:
            case_train_step(provider, res)()
        except torch.OutOfMemoryError:
            break
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        largest = res
    if largest is None:
        pytest.skip(f"{provider}: even 224 px does not fit")
    torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(case_train_step(provider, largest), rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(largest_res=largest, batch=TRAIN_BATCH)
    benchmark.extra_info["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20


@pytest.mark.parametrize("provider", ["no_crf", "crf"])
def test_eval(benchmark, peak_rss_mb, provider):
    fn = case_eval(provider)
    if HAS_CUDA:
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(fn, rounds=3, warmup_rounds=1)
    per_image = benchmark.stats.stats.median / EVAL_IMAGES
    benchmark.extra_info.update(
        per_image_ms=per_image * 1e3, images_per_call=EVAL_IMAGES, images_per_s=1 / per_image
    )
    _record(benchmark, peak_rss_mb, "case_eval", provider=provider)
