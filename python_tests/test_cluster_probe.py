"""ClusterProbe: STEGO's cluster lookup semantics (SPEC section 5) and its k-means start."""

import pytest
import torch
import torch.nn.functional as F

from unseg_kernels import kmeans
from unseg_kernels.nn import ClusterProbe
from unseg_kernels.testing import assert_close

TOL = 1e-6


def cosines(code, clusters):
    """[B, D, H, W] x [K, D] -> [B, K, H, W] through F.cosine_similarity (another path than
    the probe's normalise-then-einsum)."""
    return F.cosine_similarity(code[:, None], clusters[None, :, :, None, None], dim=2, eps=1e-10)


def test_training_loss_is_minus_mean_max_cos():
    probe = ClusterProbe(5, 12)
    code = torch.randn(2, 12, 7, 9)
    loss, probs = probe(code)
    cos = cosines(code, probe.clusters.detach())
    assert_close(loss, -cos.max(dim=1).values.mean(), TOL, "loss")
    assert torch.equal(probs, F.one_hot(cos.argmax(1), 5).permute(0, 3, 1, 2).float())


def test_evaluation_log_softmax_alpha_two():
    probe = ClusterProbe(6, 8)
    code = torch.randn(3, 8, 5, 4)
    cos = cosines(code, probe.clusters.detach())
    _, log_probs = probe(code, alpha=2.0, log_probs=True)
    assert_close(log_probs, F.log_softmax(2 * cos, dim=1), TOL, "log_probs")
    loss, probs = probe(code, alpha=2.0)
    assert_close(probs, F.softmax(2 * cos, dim=1), TOL, "probs")
    assert_close(loss, -(probs * cos).sum(1).mean(), TOL, "soft loss")


def test_code_is_detached_and_centroids_learn():
    torch.manual_seed(0)
    probe = ClusterProbe(4, 10)
    code = torch.randn(4, 10, 6, 6, requires_grad=True)
    opt = torch.optim.Adam(probe.parameters(), lr=5e-3)
    first = None
    for _ in range(50):
        loss, _ = probe(code)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert code.grad is None
    assert loss.item() < first


def test_init_from_kmeans():
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(2, 16, 10, 10, generator=g)
    probe = ClusterProbe(7, 16)
    res = probe.init_from_kmeans(codes, seed=3)
    points = codes.permute(0, 2, 3, 1).reshape(-1, 16)
    expected = kmeans(points, 7, metric="cosine", seed=3)
    assert torch.equal(probe.clusters.detach(), expected.centroids)
    assert torch.equal(res.labels, expected.labels)
    assert_close(probe.clusters.detach().norm(dim=1), torch.ones(7), TOL, "unit centroids")
    # The k-means labels are the probe's hard assignment.
    _, probs = probe(codes)
    assert torch.equal(probs.argmax(1).flatten(), res.labels.view(2, 10, 10).flatten())
    flat = ClusterProbe(7, 16)
    flat.init_from_kmeans(points, seed=3)
    assert torch.equal(flat.clusters.detach(), probe.clusters.detach())


def test_reset_parameters_draws_again():
    probe = ClusterProbe(3, 4)
    before = probe.clusters.detach().clone()
    probe.reset_parameters()
    assert not torch.equal(before, probe.clusters.detach())


def test_bad_input():
    probe = ClusterProbe(3, 4)
    with pytest.raises(ValueError, match=r"code must have shape \[B, D, H, W\] with D=4"):
        probe(torch.randn(1, 5, 2, 2))
    with pytest.raises(ValueError, match="log_probs=True needs alpha"):
        probe(torch.randn(1, 4, 2, 2), log_probs=True)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        probe(torch.randn(1, 4, 2, 2), alpha="2")
    with pytest.raises(ValueError, match="always clusters with metric='cosine'"):
        probe.init_from_kmeans(torch.randn(10, 4), metric="euclidean")
    with pytest.raises(ValueError, match=r"codes must have shape \[N, D\] or \[B, D, H, W\]"):
        probe.init_from_kmeans(torch.randn(10, 5))
    with pytest.raises(ValueError, match=r"n_clusters must be in \[1, inf\]"):
        ClusterProbe(0, 4)
    with pytest.raises(TypeError, match="dim must be an int"):
        ClusterProbe(3, 4.0)
