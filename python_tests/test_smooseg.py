"""SmooSeg: the closed-form smoothness loss, the tiled cross-check, the modules."""

import pytest
import torch

from unseg_kernels import reference, smooseg_smooth_loss
from unseg_kernels.nn import SmooSegLoss, SmooSegPredictor, super_perm
from unseg_kernels.nn.smooseg import mean_dissimilarity
from unseg_kernels.recipes import SMOOSEG_RECIPES
from unseg_kernels.testing import assert_close

# Relative tolerances against the float64 materialised reference, per (backend, dtype).
TOL = {
    ("torch", torch.float64): 1e-10,
    ("torch", torch.float32): 1e-5,
    ("triton", torch.float32): 1e-5,
    ("triton", torch.bfloat16): 2e-2,
}
# (B, C, K, H, W, I, J)
SHAPES = [
    pytest.param((2, 24, 5, 5, 7, 6, 4), id="odd"),
    pytest.param((1, 33, 27, 3, 3, 3, 3), id="batch1-K27"),
    pytest.param((3, 8, 2, 9, 2, 1, 11), id="thin"),
]
GRAD_OUT = 0.37


def make_inputs(shape, dtype=torch.float64, device="cpu"):
    B, C, K, H, W, I, J = shape
    f1 = torch.randn(B, C, H, W, dtype=torch.float64)
    f2 = torch.randn(B, C, I, J, dtype=torch.float64)
    # softmax of peaked logits, like the teacher's A at tau = 0.1
    a1 = (torch.randn(B, K, H, W, dtype=torch.float64) * 3).softmax(1)
    a2 = (torch.randn(B, K, I, J, dtype=torch.float64) * 3).softmax(1)
    return [t.to(dtype).to(device) for t in (f1, f2, a1, a2)]


def loss_and_grads(fn, f1, f2, a1, a2, alias=False):
    a1 = a1.detach().requires_grad_()
    a2 = a1 if alias else a2.detach().requires_grad_()
    loss = fn(f1, f1 if alias else f2, a1, a2)
    leaves = (a1,) if alias else (a1, a2)
    return loss.detach(), torch.autograd.grad(
        loss, leaves, torch.tensor(GRAD_OUT, dtype=loss.dtype)
    )


def check(backend, shape, dtype, device, pointwise, alias=False):
    inputs = make_inputs(shape, dtype, device)
    as64 = [t.detach().cpu().double() for t in inputs]
    want = loss_and_grads(
        lambda *t: reference.smooseg_smooth_loss(*t, -0.02, pointwise=pointwise), *as64, alias=alias
    )
    got = loss_and_grads(
        lambda *t: smooseg_smooth_loss(*t, -0.02, pointwise=pointwise, backend=backend),
        *inputs, alias=alias,
    )  # fmt: skip
    tol = TOL[(backend, dtype)]
    assert_close(got[0], want[0], tol, "loss")
    for g, w in zip(got[1], want[1], strict=True):
        assert g.dtype == dtype
        assert_close(g, w, tol, "grad")


@pytest.mark.parametrize("alias", [False, True], ids=["inter", "intra"])
@pytest.mark.parametrize("pointwise", [True, False], ids=["pw", "no-pw"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
def test_closed_form_matches_reference(shape, dtype, pointwise, alias):
    check("torch", shape, dtype, "cpu", pointwise, alias)


@pytest.mark.triton
@pytest.mark.parametrize("pointwise", [True, False], ids=["pw", "no-pw"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_tiled_triton_matches_reference(triton_device, shape, dtype, pointwise):
    check("triton", shape, dtype, triton_device, pointwise)


@pytest.mark.triton
def test_tiled_triton_intra_term(triton_device):
    check("triton", (2, 16, 5, 4, 5, 0, 0), torch.float32, triton_device, True, alias=True)


def test_autocast_computes_in_float32():
    f1, f2, a1, a2 = make_inputs((2, 16, 5, 4, 4, 3, 3), torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = smooseg_smooth_loss(f1, f2, a1, a2, 0.48)
    assert loss.dtype == torch.float32
    assert_close(
        loss, reference.smooseg_smooth_loss(*(t.double() for t in (f1, f2, a1, a2)), 0.48), 1e-5
    )


def test_gradcheck_float64():
    f1, f2, a1, a2 = make_inputs((2, 5, 3, 2, 3, 3, 2))
    a1.requires_grad_()
    a2.requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y: smooseg_smooth_loss(f1, f2, x, y, 0.1), (a1, a2))


def test_loss_module_terms():
    feats = torch.randn(4, 16, 5, 6, dtype=torch.float64)
    assign = (torch.randn(4, 7, 5, 6, dtype=torch.float64) * 3).softmax(1)
    out = SmooSegLoss(intra_shift=-0.02, inter_shift=0.48)(
        feats, assign, generator=torch.Generator().manual_seed(1)
    )
    perm = super_perm(4, generator=torch.Generator().manual_seed(1))
    intra = reference.smooseg_smooth_loss(feats, feats, assign, assign, -0.02)
    inter = reference.smooseg_smooth_loss(feats, feats[perm], assign, assign[perm], 0.48)
    assert_close(out.intra_loss, intra, 1e-10)
    assert_close(out.inter_loss, inter, 1e-10)
    assert_close(out.loss, intra + inter, 1e-10)
    similarity = reference.correlation(assign, assign[perm])
    assert_close(out.inter_dissimilarity, (1 - similarity).mean(), 1e-6)
    assert_close(out.intra_dissimilarity, mean_dissimilarity(assign, assign), 0.0)


def test_loss_module_from_recipe():
    loss_fn = SmooSegLoss.from_recipe("potsdam_vitb8")
    assert (loss_fn.intra_shift, loss_fn.inter_shift) == (0.1, 0.5)
    assert SMOOSEG_RECIPES["potsdam_vitb8"].n_classes == 3
    with pytest.raises(ValueError, match="name must be one of"):
        SmooSegLoss.from_recipe("ade20k")


def test_predictor_gradients_reach_only_what_spec_says():
    """L_smooth trains only the projector h; L_data only the student prototypes."""
    torch.manual_seed(0)
    projector = torch.nn.Conv2d(12, 8, 1).double()
    predictor = SmooSegPredictor(5, 8).double()
    feats = torch.randn(3, 12, 4, 5, dtype=torch.float64)
    out = predictor(projector(feats))
    smooth = SmooSegLoss()(feats, out.assign).loss
    params = [*projector.parameters(), predictor.prototypes]

    g_smooth = torch.autograd.grad(smooth, params, retain_graph=True, allow_unused=True)
    assert all(g is not None and g.abs().sum() > 0 for g in g_smooth[:2])
    assert g_smooth[2] is None

    g_data = torch.autograd.grad(out.data_loss, params, allow_unused=True)
    assert g_data[0] is None and g_data[1] is None
    assert g_data[2] is not None and g_data[2].abs().sum() > 0
    assert not predictor.teacher_prototypes.requires_grad


def test_predictor_outputs_and_ema():
    torch.manual_seed(0)
    predictor = SmooSegPredictor(6, 4, tau=0.1, ema=0.9).double()
    assert_close(predictor.prototypes.norm(dim=1), torch.ones(6, dtype=torch.float64), 1e-6)
    assert torch.equal(predictor.prototypes.data, predictor.teacher_prototypes)
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    out = predictor(z)
    z_hat = reference.norm(z)
    teacher = torch.einsum("bdhw,kd->bkhw", z_hat, reference.norm(predictor.teacher_prototypes))
    assert_close(out.teacher_logits, teacher, 1e-12)
    assert_close(out.assign, (teacher / 0.1).softmax(1), 1e-12)
    want = torch.nn.functional.cross_entropy(out.student_logits, teacher.argmax(1))
    assert_close(out.data_loss, want, 1e-12)

    with torch.no_grad():
        predictor.prototypes.add_(1.0)
    before = predictor.teacher_prototypes.clone()
    predictor.update_teacher()
    assert_close(
        predictor.teacher_prototypes, 0.9 * before + 0.1 * predictor.prototypes.data, 1e-12
    )


@pytest.mark.parametrize(
    "change, error, match",
    [
        (
            lambda a: a.neg(),
            ValueError,
            "a1 must hold non-negative soft assignments, found negative",
        ),
        (lambda a: a.index_fill(1, torch.tensor([0]), float("nan")), ValueError, "found NaN"),
        (lambda a: a.index_fill(1, torch.tensor([0]), float("inf")), ValueError, "found inf"),
        (lambda a: a[:, :, :, :2], ValueError, r"a1 must have shape \[B, K, H, W\]"),
        (lambda a: a[0], ValueError, r"a1 must have shape \[B, K, H, W\]"),
        (lambda a: a.long(), TypeError, "a1 must be a floating-point"),
    ],
)
def test_bad_assignments(change, error, match):
    f1, f2, a1, a2 = make_inputs((2, 8, 3, 4, 4, 3, 3))
    with pytest.raises(error, match=match):
        smooseg_smooth_loss(f1, f2, change(a1), a2, 0.1)


def test_mismatched_k_or_batch():
    f1, f2, a1, a2 = make_inputs((2, 8, 3, 4, 4, 3, 3))
    with pytest.raises(ValueError, match=r"a2 must have shape .* K=3"):
        smooseg_smooth_loss(f1, f2, a1, a2[:, :2], 0.1)
    with pytest.raises(ValueError, match=r"a1 must have shape .* B=2"):
        smooseg_smooth_loss(f1, f2, a1[:1], a2, 0.1)


def test_bad_predictor_input():
    predictor = SmooSegPredictor(3, 4)
    with pytest.raises(ValueError, match=r"z must have shape \[B, 4, H, W\]"):
        predictor(torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="n_classes must be a positive int"):
        SmooSegPredictor(0, 4)
    with pytest.raises(ValueError, match="tau must be positive"):
        SmooSegPredictor(3, 4, tau=0.0)


def test_torch_compile_keeps_the_op_in_one_graph():
    f1, _, a1, _ = make_inputs((2, 8, 4, 3, 3, 2, 2), torch.float32)
    logits = a1.log().requires_grad_()

    def step(logits):
        assign = logits.softmax(1)
        return smooseg_smooth_loss(f1, f1, assign, assign, 0.1)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    want, got = step(logits), compiled(logits)
    assert_close(got, want, 1e-6)
    assert_close(torch.autograd.grad(got, logits)[0], torch.autograd.grad(want, logits)[0], 1e-6)
