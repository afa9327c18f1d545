"""dense_crf against pydensecrf on real photographs, CPU against CUDA, and bad input."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from unseg_kernels import dense_crf, dense_crf_from_logits, reference
from unseg_kernels._native import native
from unseg_kernels.ops.crf import crf_lattice_stats

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image provides the photographs")
# Only the parity tests need pydensecrf2; the CUDA tests compare with our CPU path.
needs_pydensecrf = pytest.mark.skipif(
    importlib.util.find_spec("pydensecrf") is None, reason="pydensecrf2 is the reference"
)

# The contract with pydensecrf: argmax agreement and mean |dQ|. Both paths compute the same
# lattice and the same sums, so we also hold ourselves to the largest |dQ| float rounding
# can explain.
ARGMAX_AGREEMENT = 0.995
MEAN_ABS_TOL = 1e-3
MAX_ABS_TOL = 1e-4
# CPU against CUDA (float atomics and a different exp/log): largest |dQ|, and the argmax must
# agree wherever the top two classes are further apart than twice that.
CUDA_TOL = 1e-4
# iters=0 against softmax(log(clip(p))) computed by torch.
INIT_TOL = 1e-6

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def photo(name: str, size: tuple[int, int]) -> torch.Tensor:
    """A scikit-image photograph, centre-cropped to the aspect ratio of ``size`` and resized
    to it: uint8 [H, W, 3]."""
    img = torch.from_numpy(getattr(skimage_data, name)().copy())
    H, W = size
    h, w = img.shape[:2]
    if h * W > w * H:  # too tall
        crop = max(1, round(w * H / W))
        img = img[(h - crop) // 2 : (h - crop) // 2 + crop]
    else:
        crop = max(1, round(h * W / H))
        img = img[:, (w - crop) // 2 : (w - crop) // 2 + crop]
    x = img.permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous()


def class_probs(C: int, size: tuple[int, int], kind: str, seed: int = 0) -> torch.Tensor:
    """Class probabilities [C, H, W]: "smooth" as STEGO's (coarse logits upsampled, then
    softmax) or "noisy" (the same plus per-pixel noise)."""
    g = torch.Generator().manual_seed(seed)
    H, W = size
    coarse = torch.randn(1, C, max(1, H // 40), max(1, W // 40), generator=g) * 3.0
    logits = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0]
    if kind == "noisy":
        logits = logits + 1.5 * torch.randn(C, H, W, generator=g)
    return logits.softmax(0)


def assert_parity(q: torch.Tensor, ref: torch.Tensor) -> None:
    diff = (q - ref).abs()
    agree = (q.argmax(0) == ref.argmax(0)).float().mean().item()
    assert agree >= ARGMAX_AGREEMENT, f"argmax agreement {agree:.5f} < {ARGMAX_AGREEMENT}"
    assert diff.mean().item() <= MEAN_ABS_TOL, f"mean |dQ| {diff.mean().item():.3e}"
    worst = diff.amax(0).argmax().item()
    assert diff.max().item() <= MAX_ABS_TOL, (
        f"max |dQ| {diff.max().item():.3e} > {MAX_ABS_TOL:.0e} at pixel "
        f"{divmod(worst, q.shape[-1])}"
    )


# (photo, (H, W), classes, probability map): square, non-square and odd sizes, one row, one
# column, one pixel, 2 to 33 classes (33 exceeds the largest compiled row width).
PARITY_CASES = [
    pytest.param("astronaut", (320, 320), 27, "smooth", id="astronaut-320x320-27-smooth"),
    pytest.param("coffee", (241, 173), 5, "noisy", id="coffee-241x173-5-noisy"),
    pytest.param("chelsea", (150, 211), 33, "smooth", id="chelsea-150x211-33-smooth"),
    pytest.param("rocket", (97, 131), 2, "noisy", id="rocket-97x131-2-noisy"),
    pytest.param("astronaut", (48, 320), 27, "noisy", id="astronaut-48x320-27-noisy"),
    pytest.param("chelsea", (1, 57), 4, "smooth", id="chelsea-1x57-4"),
    pytest.param("rocket", (43, 1), 3, "noisy", id="rocket-43x1-3"),
    pytest.param("coffee", (1, 1), 3, "noisy", id="coffee-1x1-3"),
]


@needs_pydensecrf
@pytest.mark.parametrize("isa", ["auto", "generic"])
@pytest.mark.parametrize(("name", "size", "C", "kind"), PARITY_CASES)
def test_matches_pydensecrf(name, size, C, kind, isa, monkeypatch):
    monkeypatch.setenv("UNSEG_CPU_ISA", isa)
    img, probs = photo(name, size), class_probs(C, size, kind)
    q = dense_crf(img, probs, num_threads=1)
    assert q.dtype == torch.float32 and q.shape == probs.shape
    assert_parity(q, reference.dense_crf_pydensecrf(img, probs))


@needs_pydensecrf
@pytest.mark.parametrize(
    "params",
    [
        pytest.param(
            dict(iters=5, pos_w=5.0, pos_xy_std=3.0, bi_w=10.0, bi_xy_std=40.0, bi_rgb_std=13.0),
            id="other-weights-and-stds",
        ),
        # A colour std this small needs lattice keys wider than 64 bits.
        pytest.param(dict(iters=3, bi_rgb_std=0.1), id="tiny-rgb-std"),
        pytest.param(dict(iters=1), id="one-iteration"),
    ],
)
def test_matches_pydensecrf_other_parameters(params):
    img, probs = photo("coffee", (72, 96)), class_probs(6, (72, 96), "noisy", seed=3)
    assert_parity(
        dense_crf(img, probs, **params), reference.dense_crf_pydensecrf(img, probs, **params)
    )


@needs_pydensecrf
def test_stego_bgr_order_matches_pydensecrf_on_bgr():
    # STEGO hands pydensecrf a BGR image; flipping the channels reproduces it.
    img, probs = photo("astronaut", (96, 80)), class_probs(27, (96, 80), "smooth", seed=1)
    bgr = img.flip(-1).contiguous()
    assert_parity(dense_crf(img.flip(-1), probs), reference.dense_crf_pydensecrf(bgr, probs))


def test_zero_iterations_is_the_clipped_probabilities():
    probs = class_probs(7, (33, 45), "noisy")
    probs[0, :3] = 0.0  # clipped to 1e-5
    q = dense_crf(photo("rocket", (33, 45)), probs, iters=0)
    expected = probs.clamp(1e-5, 1.0).log().softmax(0)
    assert (q - expected).abs().max().item() <= INIT_TOL


def test_zero_weights_keep_the_unary():
    probs = class_probs(4, (40, 30), "noisy")
    q = dense_crf(photo("chelsea", (40, 30)), probs, iters=4, pos_w=0.0, bi_w=0.0)
    expected = probs.clamp(1e-5, 1.0).log().softmax(0)
    assert (q - expected).abs().max().item() <= INIT_TOL


@pytest.mark.parametrize("C", [3, 27, 33])
def test_thread_count_does_not_change_the_result(C):
    # One thread runs the single-sweep kernels, more threads the parallel passes.
    img, probs = (
        photo(
            "coffee",
            (130, 97),
        ),
        class_probs(C, (130, 97), "noisy"),
    )
    one = dense_crf(img, probs, num_threads=1)
    assert torch.equal(one, dense_crf(img, probs, num_threads=2))
    assert torch.equal(one, dense_crf(img, probs, num_threads=3))


def test_batch_is_the_images_one_by_one():
    size = (61, 83)
    imgs = torch.stack([photo(name, size) for name in PHOTOS[:3]])
    probs = torch.stack([class_probs(5, size, "noisy", seed=s) for s in range(3)])
    batched = dense_crf(imgs, probs, num_threads=2)
    for b in range(3):
        assert torch.equal(batched[b], dense_crf(imgs[b], probs[b], num_threads=1))


def test_non_contiguous_and_other_dtypes():
    size = (50, 70)
    img, probs = photo("rocket", size), class_probs(5, size, "smooth")
    expected = dense_crf(img, probs)
    img_t = img.transpose(0, 1).contiguous().transpose(0, 1)  # same values, other strides
    probs_cl = probs[None].contiguous(memory_format=torch.channels_last)[0]
    assert not img_t.is_contiguous() and not probs_cl.is_contiguous()
    assert torch.equal(dense_crf(img_t, probs_cl), expected)
    assert (dense_crf(img, probs.double()) - expected).abs().max().item() <= INIT_TOL


def test_from_logits_upsamples_then_softmaxes():
    size = (64, 48)
    imgs = torch.stack([photo("astronaut", size), photo("coffee", size)])
    logits = torch.randn(2, 27, 8, 6)
    probs = F.interpolate(logits, size=size, mode="bilinear", align_corners=False).softmax(1)
    assert torch.equal(
        dense_crf_from_logits(imgs, logits, iters=3), dense_crf(imgs, probs, iters=3)
    )
    one = dense_crf_from_logits(imgs[0], logits[0], iters=3)
    assert torch.equal(one, dense_crf(imgs[0], probs[0], iters=3))


def test_lattice_stats():
    stats = crf_lattice_stats(photo("coffee", (64, 64)), 27)
    assert stats["pos_vertices"] >= 64 * 64 // 2 and stats["bi_vertices"] > 0
    assert stats["bytes"] > 27 * 4 * (stats["pos_vertices"] + stats["bi_vertices"])


# ---------------------------------------------------------------------------------------
# Bad input: a clear exception before any native call.

IMG = torch.zeros(6, 5, 3, dtype=torch.uint8)
PROBS = torch.full((3, 6, 5), 1 / 3)


@pytest.mark.parametrize(
    ("images", "probs", "error", "match"),
    [
        pytest.param(IMG.float(), PROBS, TypeError, "uint8", id="float-image"),
        pytest.param(IMG.numpy(), PROBS, TypeError, "torch.Tensor", id="numpy-image"),
        pytest.param(IMG, PROBS.long(), TypeError, "floating-point", id="integer-probs"),
        pytest.param(
            torch.zeros(6, 5, 4, dtype=torch.uint8), PROBS, ValueError, "3]", id="4-channels"
        ),
        pytest.param(torch.zeros(6, 5, dtype=torch.uint8), PROBS, ValueError, "3]", id="gray"),
        pytest.param(IMG, PROBS[:, :, :4], ValueError, "W=5", id="width-mismatch"),
        pytest.param(IMG, PROBS[:, :5], ValueError, "H=6", id="height-mismatch"),
        pytest.param(
            IMG[None].expand(2, -1, -1, -1), PROBS[None], ValueError, "B=2", id="batch-mismatch"
        ),
        pytest.param(IMG[None], PROBS, ValueError, r"\[B, C, H, W\]", id="rank-mismatch"),
        pytest.param(IMG, PROBS[:1], ValueError, "C >= 2", id="one-class"),
        pytest.param(IMG[:0], PROBS[:, :0], ValueError, "empty", id="zero-height"),
        pytest.param(IMG[None, :, :0], PROBS[None, :, :, :0], ValueError, "empty", id="zero-width"),
        pytest.param(IMG[None][:0], PROBS[None][:0], ValueError, "empty", id="zero-batch"),
        pytest.param(IMG.to("meta"), PROBS, ValueError, "same device", id="image-on-other-device"),
        pytest.param(IMG.to("meta"), PROBS.to("meta"), ValueError, "CPU or CUDA", id="meta-device"),
    ],
)
def test_bad_input(images, probs, error, match):
    with pytest.raises(error, match=match):
        dense_crf(images, probs)


def test_nan_and_negative_probabilities():
    for bad in (float("nan"), -0.1):
        probs = PROBS.clone()
        probs[1, 2, 3] = bad
        with pytest.raises(ValueError, match="NaN or negative"):
            dense_crf(IMG, probs)


def test_lattice_too_large_is_refused_before_allocating():
    # Expanded views: the sizes are checked before anything is materialised.
    huge = 20_000
    img = torch.zeros(1, 1, 1, 3, dtype=torch.uint8).expand(1, huge, huge, 3)
    probs = torch.zeros(1, 2, 1, 1).expand(1, 2, huge, huge)
    with pytest.raises(ValueError, match="too large"):
        dense_crf(img, probs)
    side = 8_000  # fits the index range, not this machine's memory with 27 classes
    img = torch.zeros(1, 1, 1, 3, dtype=torch.uint8).expand(64, side, side, 3)
    probs = torch.zeros(1, 27, 1, 1).expand(64, 27, side, side)
    with pytest.raises(ValueError, match="GiB"):
        dense_crf(img, probs, num_threads=64)


def test_gradients_are_refused():
    probs = PROBS.clone().requires_grad_()
    with pytest.raises(ValueError, match="not differentiable"):
        dense_crf(IMG, probs)
    with pytest.raises(ValueError, match="not differentiable"):
        dense_crf_from_logits(IMG, torch.zeros(3, 2, 2, requires_grad=True))
    with torch.no_grad():
        assert dense_crf(IMG, probs).shape == PROBS.shape


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(iters=-1), ValueError, "iters"),
        (dict(iters=2.5), TypeError, "iters"),
        (dict(pos_xy_std=0.0), ValueError, "pos_xy_std"),
        (dict(bi_rgb_std=-3.0), ValueError, "bi_rgb_std"),
        (dict(bi_w=float("nan")), ValueError, "bi_w"),
        (dict(pos_w="3"), TypeError, "pos_w"),
        (dict(num_threads=0), ValueError, "num_threads"),
        (dict(num_threads=True), TypeError, "num_threads"),
    ],
)
def test_bad_parameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        dense_crf(IMG, PROBS, **kwargs)


def test_bad_logits():
    with pytest.raises(TypeError, match="floating-point"):
        dense_crf_from_logits(IMG, torch.zeros(3, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        dense_crf_from_logits(IMG, torch.zeros(1, 3, 2, 2))


# ---------------------------------------------------------------------------------------
# CUDA: the same results as the CPU path.

CUDA_CASES = [
    pytest.param(["astronaut"], (320, 320), 27, id="astronaut-320x320-27"),
    pytest.param(["coffee", "rocket", "chelsea"], (97, 131), 5, id="batch3-97x131-5"),
    pytest.param(["chelsea"], (150, 211), 33, id="chelsea-150x211-33"),
    pytest.param(["rocket"], (1, 57), 2, id="rocket-1x57-2"),
    pytest.param(["coffee"], (1, 1), 3, id="coffee-1x1-3"),
]


def assert_cpu_cuda_agree(q_cuda: torch.Tensor, q_cpu: torch.Tensor) -> None:
    q_cuda = q_cuda.cpu()
    diff = (q_cuda - q_cpu).abs().max().item()
    assert diff <= CUDA_TOL, f"max |Q_cuda - Q_cpu| {diff:.3e} > {CUDA_TOL:.0e}"
    top2 = q_cpu.topk(min(2, q_cpu.shape[-3]), dim=-3).values
    clear = (top2[..., 0, :, :] - top2[..., -1, :, :]) > 2 * CUDA_TOL
    same = q_cuda.argmax(-3) == q_cpu.argmax(-3)
    assert bool(same[clear].all()), f"{int((~same & clear).sum())} argmax differences"


@pytest.mark.cuda
@pytest.mark.parametrize(("names", "size", "C"), CUDA_CASES)
def test_cuda_matches_cpu(names, size, C):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    imgs = torch.stack([photo(name, size) for name in names])
    probs = torch.stack([class_probs(C, size, "smooth", seed=s) for s in range(len(names))])
    q_cuda = dense_crf(imgs.cuda(), probs.cuda())
    assert q_cuda.device.type == "cuda" and q_cuda.shape == probs.shape
    assert_cpu_cuda_agree(q_cuda, dense_crf(imgs, probs))


@pytest.mark.cuda
def test_cuda_batch_of_16_on_a_side_stream():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    size = (320, 320)
    imgs = torch.stack([photo(PHOTOS[b % 4], size).roll(7 * b, 1) for b in range(16)])
    probs = torch.stack([class_probs(27, size, "smooth", seed=b) for b in range(16)])
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        imgs_d, probs_d = imgs.cuda(non_blocking=True), probs.cuda(non_blocking=True)
        q = dense_crf(imgs_d, probs_d)
    stream.synchronize()
    q_cpu = dense_crf(imgs[[0, 9, 15]], probs[[0, 9, 15]])
    assert_cpu_cuda_agree(q[[0, 9, 15]], q_cpu)
    assert_cpu_cuda_agree(
        dense_crf_from_logits(imgs_d[:2], probs_d[:2, :, ::8, ::8].log()),
        dense_crf_from_logits(imgs[:2], probs[:2, :, ::8, ::8].log()),
    )


@pytest.mark.cuda
def test_cuda_bad_input():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    probs = PROBS.clone()
    probs[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or negative"):
        dense_crf(IMG.cuda(), probs.cuda())
    with pytest.raises(ValueError, match="same device"):
        dense_crf(IMG, PROBS.cuda())


@pytest.mark.parametrize(
    "batch, labels, height, width, match",
    [
        (0, 3, 4, 4, "batch"),
        (65536, 3, 4, 4, "batch"),
        (1, 0, 4, 4, "positive"),
        (1, 3, 0, 4, "positive"),
    ],
)
def test_cuda_entry_checks_sizes_before_queuing(batch, labels, height, width, match):
    # The C++ entry point itself, below the Python wrapper that splits batches: it must reject
    # sizes before touching the (here null) pointers or the device.
    lib = native()
    if not lib.build_info()["with_cuda"]:
        pytest.skip("_C was built without CUDA")
    with pytest.raises(ValueError, match=match):
        lib.dense_crf_cuda(
            0, 0, 0, batch, labels, height, width, 10, 3.0, 1.0, 4.0, 67.0, 3.0, 0, 0, 0, 0
        )
