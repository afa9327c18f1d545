"""StegoLoss (the full objective) and its sampling helpers."""

import pytest
import torch

from unseg_kernels.nn import StegoLoss, super_perm
from unseg_kernels.nn.sampling import random_coords, sample
from unseg_kernels.recipes import STEGO_RECIPES
from unseg_kernels.testing import assert_close


def inputs(B=4, C=16, D=6, H=7, W=5, grad=True):
    feats, feats_pos = torch.randn(B, C, H, W), torch.randn(B, C, H, W)
    code = torch.randn(B, D, H, W, requires_grad=grad)
    code_pos = torch.randn(B, D, H, W, requires_grad=grad)
    return feats, feats_pos, code, code_pos


def run(loss_fn, args, seed=3):
    return loss_fn(*args, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("feature_samples", [None, 4])
def test_fused_matches_reference_terms_and_gradients(feature_samples):
    args = inputs()
    fused = run(StegoLoss(feature_samples=feature_samples, backend="torch"), args)
    ref = run(StegoLoss(feature_samples=feature_samples, backend="reference"), args)
    for name in ("loss", "self_loss", "knn_loss", "rand_loss"):
        assert_close(getattr(fused, name), getattr(ref, name), 1e-5, name)
    g_fused = torch.autograd.grad(fused.loss, args[2:])
    g_ref = torch.autograd.grad(ref.loss, args[2:])
    for a, b in zip(g_fused, g_ref, strict=True):
        assert_close(a, b, 1e-5)


def test_total_is_the_weighted_sum_and_rand_averages_negatives():
    args = inputs(grad=False)
    loss_fn = StegoLoss(
        feature_samples=None, neg_samples=3, self_weight=0.5, knn_weight=2.0, rand_weight=0.25,
        self_shift=0.1, knn_shift=0.2, rand_shift=0.3, backend="torch",
    )  # fmt: skip
    out = run(loss_fn, args)
    assert_close(out.loss, 0.5 * out.self_loss + 2.0 * out.knn_loss + 0.25 * out.rand_loss, 1e-6)
    # The same draws by hand: 3 negatives from super_perm on the generator.
    from unseg_kernels import stego_corr_loss

    g = torch.Generator().manual_seed(3)
    feats, _, code, _ = args
    rand = torch.stack([
        stego_corr_loss(feats, feats[p], code, code[p], 0.3, backend="torch")
        for p in (super_perm(4, generator=g) for _ in range(3))
    ]).mean()  # fmt: skip
    assert_close(out.rand_loss, rand, 1e-6)
    assert out.stats is None


def test_stats_per_term():
    args = inputs(grad=False)
    out = run(
        StegoLoss(feature_samples=None, neg_samples=2, backend="torch", return_stats=True), args
    )
    B, _, H, W = args[0].shape
    per_pair = B * (H * W) ** 2
    assert out.stats["self"].histogram.sum() == per_pair
    assert out.stats["rand"].histogram.sum() == 2 * per_pair
    assert -1 <= float(out.stats["knn"].mean) <= 1


def test_generator_makes_it_reproducible():
    args = inputs(grad=False)
    loss_fn = StegoLoss(backend="torch")
    assert torch.equal(run(loss_fn, args).loss, run(loss_fn, args).loss)
    assert not torch.equal(run(loss_fn, args, seed=1).loss, run(loss_fn, args, seed=2).loss)


def test_from_recipe():
    recipe = STEGO_RECIPES["cityscapes_vitb8"]
    loss_fn = StegoLoss.from_recipe("cityscapes_vitb8", feature_samples=None)
    assert loss_fn.shifts["rand"] == recipe.rand_shift
    assert loss_fn.weights["knn"] == recipe.knn_weight
    assert loss_fn.pair_kwargs["pointwise"] is False
    assert loss_fn.feature_samples is None
    with pytest.raises(ValueError, match="name must be one of"):
        StegoLoss.from_recipe("imagenet")


def test_super_perm_never_pairs_an_image_with_itself():
    g = torch.Generator().manual_seed(0)
    for size in (2, 3, 8):
        for _ in range(50):
            perm = super_perm(size, generator=g)
            assert perm.shape == (size,)
            assert not torch.any(perm == torch.arange(size))
            assert perm.min() >= 0 and perm.max() < size


def test_sample_matches_grid_sample_at_token_centres():
    t = torch.randn(1, 3, 4, 5)
    # coords (x, y) at exact token centres with align_corners=True; transposed as STEGO does
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 4), torch.linspace(-1, 1, 5), indexing="ij")
    coords = torch.stack([xs, ys], -1).permute(1, 0, 2)[None]  # [1, W, H, 2]
    assert_close(sample(t, coords), t, 1e-6)
    assert random_coords(2, 3, torch.device("cpu")).shape == (2, 3, 3, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"feature_samples": 0}, "feature_samples"),
        ({"feature_samples": 2.5}, "feature_samples"),
        ({"neg_samples": -1}, "neg_samples"),
    ],
)
def test_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StegoLoss(**kwargs)


def test_bad_inputs_name_the_argument():
    feats, feats_pos, code, code_pos = inputs(grad=False)
    loss_fn = StegoLoss(backend="torch")
    with pytest.raises(ValueError, match="code_pos must have shape"):
        loss_fn(feats, feats_pos, code, code_pos[:, :3])
    with pytest.raises(ValueError, match="code must have shape"):
        loss_fn(feats, feats_pos, code[:2], code_pos)
