"""stego_corr_loss against the materialising reference: values, gradients, statistics."""

import itertools

import pytest
import torch

from unseg_kernels import reference, stego_corr_loss
from unseg_kernels.kernels.torch_pair_loss import cd_histogram
from unseg_kernels.testing import assert_close

# Relative tolerances per (backend, input dtype), against a float64 reference computed on
# the same (rounded) inputs. Triton float32 uses IEEE dots under PyTorch's default
# "highest" matmul precision; TF32 would need 1e-3.
TOL = {
    ("torch", torch.float64): 1e-10,
    ("torch", torch.float32): 1e-5,
    ("triton", torch.float32): 1e-5,
    ("triton", torch.float16): 1e-2,
    ("triton", torch.bfloat16): 2e-2,
}

# (B, C, D, H, W, I, J): odd sizes, I, J != H, W, batch 1, sizes off every tile multiple,
# a single position, and D=70 (STEGO's code width, padded to 128 in the kernel).
SHAPES = [
    pytest.param((2, 24, 10, 5, 7, 6, 4), id="odd"),
    pytest.param((1, 33, 17, 3, 3, 3, 3), id="batch1"),
    pytest.param((3, 8, 3, 9, 2, 1, 11), id="thin"),
    pytest.param((2, 40, 70, 4, 5, 4, 5), id="D70"),
    pytest.param((2, 16, 4, 1, 1, 2, 3), id="single-row"),
]
FLAGS = [
    dict(pointwise=pw, zero_clamp=zc, stabilize=st)
    for pw, zc, st in itertools.product([True, False], repeat=3)
]
FLAG_IDS = ["pw{pointwise:d}-zc{zero_clamp:d}-st{stabilize:d}".format(**f) for f in FLAGS]
SHIFT = 0.2
GRAD_OUT = 0.37  # upstream gradient != 1, so a missing scale shows


def make_inputs(shape, dtype, device, alias=False):
    B, C, D, H, W, I, J = shape
    if alias:
        I, J = H, W
    f1 = torch.randn(B, C, H, W, dtype=torch.float64).to(dtype)
    c1 = torch.randn(B, D, H, W, dtype=torch.float64).to(dtype)
    if alias:
        f2, c2 = f1, c1
    else:
        f2 = torch.randn(B, C, I, J, dtype=torch.float64).to(dtype)
        c2 = torch.randn(B, D, I, J, dtype=torch.float64).to(dtype)
    return [t.to(device) for t in (f1, f2, c1, c2)]


def loss_and_grads(fn, f1, f2, c1, c2, alias=False):
    """Loss and gradients w.r.t. c1, c2 (one gradient when c1 is c2) for GRAD_OUT."""
    c1 = c1.detach().requires_grad_()
    c2 = c1 if alias else c2.detach().requires_grad_()
    f2 = f1 if alias else f2
    loss = fn(f1, f2, c1, c2)
    leaves = (c1,) if alias else (c1, c2)
    grads = torch.autograd.grad(loss, leaves, torch.tensor(GRAD_OUT, dtype=loss.dtype))
    return loss.detach(), grads


def check_against_reference(backend, shape, dtype, device, flags, alias=False, **kwargs):
    f1, f2, c1, c2 = make_inputs(shape, dtype, device, alias)

    def ref(a, b, c, d):
        return reference.stego_corr_loss(a, b, c, d, SHIFT, **flags)[0]

    def fused(a, b, c, d):
        return stego_corr_loss(a, b, c, d, SHIFT, backend=backend, **flags, **kwargs)

    as64 = [t.detach().cpu().double() for t in (f1, f2, c1, c2)]
    want_loss, want_grads = loss_and_grads(ref, *as64, alias=alias)
    got_loss, got_grads = loss_and_grads(fused, f1, f2, c1, c2, alias=alias)
    tol = TOL[(backend, dtype)]
    assert got_loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert_close(got_loss, want_loss, tol, "loss")
    for i, (got, want) in enumerate(zip(got_grads, want_grads, strict=True)):
        assert got.dtype == dtype and got.shape == want.shape
        assert_close(got, want, tol, f"grad c{i + 1}")


@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_torch_backend_matches_reference(shape, dtype, flags):
    check_against_reference("torch", shape, dtype, "cpu", flags)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("flags", FLAGS[:2], ids=FLAG_IDS[:2])
def test_torch_backend_self_term(dtype, flags):
    check_against_reference("torch", (2, 12, 6, 4, 5, 0, 0), dtype, "cpu", flags, alias=True)


def test_torch_backend_under_bf16_autocast():
    # A head under autocast emits bf16 codes beside float32 features; the op must still
    # accumulate in float32 (autocast off inside) and return gradients in the codes' dtype.
    f1, f2, c1, c2 = make_inputs((2, 24, 10, 5, 7, 6, 4), torch.float32, "cpu")
    c1, c2 = c1.bfloat16(), c2.bfloat16()

    def fused(a, b, c, d):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return stego_corr_loss(a, b, c, d, SHIFT, backend="torch")

    def ref(a, b, c, d):
        return reference.stego_corr_loss(a, b, c, d, SHIFT)[0]

    got_loss, got_grads = loss_and_grads(fused, f1, f2, c1, c2)
    as64 = [t.double() for t in (f1, f2, c1, c2)]
    want_loss, want_grads = loss_and_grads(ref, *as64)
    assert got_loss.dtype == torch.float32
    assert_close(got_loss, want_loss, TOL[("torch", torch.float32)], "loss")
    for got, want in zip(got_grads, want_grads, strict=True):
        assert got.dtype == torch.bfloat16
        assert_close(got, want, TOL[("triton", torch.bfloat16)], "grad")  # bf16 rounding


@pytest.mark.triton
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"]
)
def test_triton_matches_reference(triton_device, shape, dtype):
    check_against_reference("triton", shape, dtype, triton_device, FLAGS[0])


@pytest.mark.triton
@pytest.mark.parametrize("flags", FLAGS, ids=FLAG_IDS)
def test_triton_flags(triton_device, flags):
    check_against_reference("triton", (2, 24, 10, 5, 7, 6, 4), torch.float32, triton_device, flags)


@pytest.mark.triton
@pytest.mark.parametrize("deterministic", [False, True], ids=["atomic", "deterministic"])
def test_triton_self_term(triton_device, deterministic):
    check_against_reference(
        "triton", (2, 12, 6, 4, 5, 0, 0), torch.float32, triton_device, FLAGS[0],
        alias=True, deterministic=deterministic,
    )  # fmt: skip


@pytest.mark.triton
def test_triton_deterministic_is_reproducible(triton_device):
    inputs = make_inputs((2, 24, 10, 5, 7, 6, 4), torch.float32, triton_device)
    check_against_reference(
        "triton", (2, 24, 10, 5, 7, 6, 4), torch.float32, triton_device, FLAGS[0],
        deterministic=True,
    )  # fmt: skip

    def run():
        return loss_and_grads(
            lambda *t: stego_corr_loss(*t, SHIFT, backend="triton", deterministic=True), *inputs
        )

    (l1, g1), (l2, g2) = run(), run()
    assert torch.equal(l1, l2) and all(torch.equal(a, b) for a, b in zip(g1, g2, strict=True))


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_non_contiguous_inputs(request, backend, layout):
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    f1, f2, c1, c2 = make_inputs((2, 20, 12, 5, 6, 4, 7), torch.float32, device)
    if layout == "channels_last":
        views = [t.to(memory_format=torch.channels_last) for t in (f1, f2, c1, c2)]
    else:  # every other channel of a wider tensor, and a transposed spatial layout
        views = []
        for t in (f1, f2, c1, c2):
            B, C, H, W = t.shape
            wide = torch.zeros(B, 2 * C, W, H, device=device).transpose(2, 3)
            wide[:, ::2] = t
            views.append(wide[:, ::2])
    assert not any(v.is_contiguous() for v in views)
    want_loss, want_grads = loss_and_grads(
        lambda *t: stego_corr_loss(*t, SHIFT, backend=backend), f1, f2, c1, c2
    )
    got_loss, got_grads = loss_and_grads(
        lambda *t: stego_corr_loss(*t, SHIFT, backend=backend), *views
    )
    assert_close(got_loss, want_loss, 1e-6, "loss")
    for got, want in zip(got_grads, want_grads, strict=True):
        assert_close(got, want, 1e-6, "grad")


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.triton)])
def test_cd_statistics(request, backend):
    device = request.getfixturevalue("triton_device") if backend == "triton" else "cpu"
    f1, f2, c1, c2 = make_inputs((2, 24, 10, 5, 7, 6, 4), torch.float32, device)
    loss, stats = stego_corr_loss(f1, f2, c1, c2, SHIFT, backend=backend, return_stats=True)
    _, cd = reference.stego_corr_loss(*(t.cpu().double() for t in (f1, f2, c1, c2)), SHIFT)
    assert_close(stats.mean, cd.mean(), 1e-5, "cd mean")
    want = cd_histogram(cd, stats.histogram.numel())
    assert stats.histogram.sum() == cd.numel()
    # fp32 rounding may move a value that sits on a bin edge to the next bin
    assert (stats.histogram.cpu() - want).abs().sum() <= 2
    assert stats.bin_edges().shape == (stats.histogram.numel() + 1,)
    assert_close(loss, stego_corr_loss(f1, f2, c1, c2, SHIFT, backend=backend), 0.0, "loss")


def test_reference_backend_is_the_reference():
    f1, f2, c1, c2 = make_inputs((2, 8, 4, 3, 3, 2, 2), torch.float64, "cpu")
    got = stego_corr_loss(f1, f2, c1, c2, SHIFT, backend="reference")
    assert torch.equal(got, reference.stego_corr_loss(f1, f2, c1, c2, SHIFT)[0])


def test_gradcheck_float64():
    f1, f2, c1, c2 = make_inputs((2, 6, 4, 3, 2, 2, 3), torch.float64, "cpu")
    c1.requires_grad_()
    c2.requires_grad_()
    for flags in (FLAGS[0], FLAGS[-1]):
        assert torch.autograd.gradcheck(
            lambda a, b, fl=flags: stego_corr_loss(f1, f2, a, b, SHIFT, backend="torch", **fl),
            (c1, c2),
        )


def test_no_grad_skips_gradient():
    f1, f2, c1, c2 = make_inputs((2, 8, 4, 3, 3, 2, 2), torch.float32, "cpu")
    c1.requires_grad_()
    with torch.no_grad():
        loss = stego_corr_loss(f1, f2, c1, c2, SHIFT, backend="torch")
    assert not loss.requires_grad
    loss = stego_corr_loss(f1, f2, c1, c2, SHIFT, backend="torch")  # only c1 needs a gradient
    (g1,) = torch.autograd.grad(loss, (c1,))
    want = torch.autograd.grad(reference.stego_corr_loss(f1, f2, c1, c2, SHIFT)[0], (c1,))[0]
    assert_close(g1, want, 1e-5)


def test_torch_compile_keeps_the_op_in_one_graph():
    f1, f2, c1, c2 = make_inputs((2, 8, 4, 3, 3, 2, 2), torch.float32, "cpu")
    head = torch.nn.Conv2d(4, 4, 1)

    def step(f1, f2, c1, c2):
        return stego_corr_loss(f1, f2, head(c1), head(c2), SHIFT, backend="torch")

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    want = step(f1, f2, c1, c2)
    want_grads = torch.autograd.grad(want, list(head.parameters()))
    got = compiled(f1, f2, c1, c2)
    got_grads = torch.autograd.grad(got, list(head.parameters()))
    assert_close(got, want, 1e-6, "loss")
    for g, w in zip(got_grads, want_grads, strict=True):
        assert_close(g, w, 1e-6, "grad")


def _good():
    return make_inputs((2, 8, 4, 3, 3, 2, 2), torch.float32, "cpu")


def _replace(i, value):
    args = _good()
    args[i] = value
    return args


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (_replace(0, torch.randn(2, 8, 9)), {}, ValueError, r"f1 must have shape \[B, C, H, W\]"),
        (_replace(1, torch.randn(2, 7, 2, 2)), {}, ValueError, "f2 must have shape .* C=8"),
        (_replace(1, torch.randn(3, 8, 2, 2)), {}, ValueError, "f2 must have shape .* B=2"),
        (_replace(2, torch.randn(2, 4, 3, 2)), {}, ValueError, "c1 must have shape .* H=3, W=3"),
        (_replace(3, torch.randn(2, 5, 2, 2)), {}, ValueError, "c2 must have shape .* D=4"),
        (_replace(3, torch.randn(2, 4, 3, 3)), {}, ValueError, "c2 must have shape .* I=2, J=2"),
        (
            _replace(2, torch.ones(2, 4, 3, 3, dtype=torch.int32)),
            {},
            TypeError,
            "c1 must be a floating-point",
        ),
        (_replace(0, torch.randn(2, 8, 3, 0)), {}, ValueError, "f1 must not be empty"),
        (_replace(0, torch.randn(0, 8, 3, 3)), {}, ValueError, "f1 must not be empty"),
        (_replace(1, [[1.0]]), {}, TypeError, "f2 must be a torch.Tensor"),
        (
            _replace(0, torch.randn(2, 8, 3, 3, device="meta")),
            {},
            ValueError,
            "f2 is on cpu but f1 is on meta",
        ),
        (_good(), {"backend": "jax"}, ValueError, "backend must be one of"),
        (_good(), {"shift": "0.1"}, TypeError, "shift must be a real number"),
        (_good(), {"shift": float("nan")}, ValueError, "shift must be finite"),
    ],
)
def test_bad_input(args, kwargs, error, match):
    kwargs = {"shift": SHIFT, **kwargs}
    with pytest.raises(error, match=match):
        stego_corr_loss(*args, **kwargs)


def test_triton_backend_needs_cuda_or_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        stego_corr_loss(*_good(), SHIFT, backend="triton")


def test_triton_backend_needs_triton(monkeypatch):
    from unseg_kernels import _env

    monkeypatch.setattr(_env, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="needs the triton package"):
        stego_corr_loss(*_good(), SHIFT, backend="triton")
    # and "auto" quietly uses the torch backend
    assert torch.isfinite(stego_corr_loss(*_good(), SHIFT))


@pytest.mark.triton
def test_triton_rejects_float64_and_wide_codes(triton_device):
    f1, f2, c1, c2 = make_inputs((1, 8, 4, 3, 3, 2, 2), torch.float64, triton_device)
    with pytest.raises(TypeError, match="float64"):
        stego_corr_loss(f1, f2, c1, c2, SHIFT, backend="triton")
    f1, f2, c1, c2 = make_inputs((1, 8, 257, 3, 3, 2, 2), torch.float32, triton_device)
    with pytest.raises(ValueError, match="at most 256 channels"):
        stego_corr_loss(f1, f2, c1, c2, SHIFT, backend="triton")
