"""knn against the float64 brute-force reference."""

import importlib

import pytest
import torch

from unseg_kernels import knn, reference

# The module itself (the package attribute unseg_kernels.ops.knn is the function).
knn_module = importlib.import_module("unseg_kernels.ops.knn")
# Values: float32 blocks against the float64 reference.
VALUE_TOL = 1e-5
# Neighbours whose score is within this of the k-th one may legitimately swap places.
TIE_GAP = 1e-4
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (N, M or None, D, k, chunk): self-search, several query and key blocks, k = M, one block.
CASES = [
    pytest.param((1000, None, 64, 30, 128), id="self-blocks"),
    pytest.param((257, 1031, 37, 5, 50), id="keys-odd"),
    pytest.param((64, 40, 8, 40, 7), id="k=M"),
    pytest.param((300, None, 16, 1, None), id="k1-default-chunk"),
]


def close_values(values, ref_values, scale, name):
    """|values - ref| <= VALUE_TOL * scale, where scale is 1 for cosine and the largest squared
    norm for euclidean: ||q||^2 - 2 q.k + ||k||^2 loses digits relative to the norms, not to
    the distance (a self-distance comes out near 1e-6 instead of 0)."""
    err = float((values.double() - ref_values.double()).abs().max())
    assert err <= VALUE_TOL * scale, f"{name}: max error {err:.3e} > {VALUE_TOL:.0e} * {scale:.3e}"


def check_neighbours(values, indices, ref_values, ref_indices, scores_fn, largest, scale):
    """Indices equal the reference's except among near-ties; values match everywhere."""
    close_values(values, ref_values, scale, "values")
    kth = ref_values[:, -1:]
    # Where the reference's value is clearly inside the top-k, the same index must be there.
    clear = (ref_values - kth).abs() > TIE_GAP
    for row in range(indices.shape[0]):
        want = set(ref_indices[row][clear[row]].tolist())
        got = set(indices[row].tolist())
        assert want <= got, f"row {row}: missing {want - got}"
    # Every returned index scores what it claims.
    close_values(values, scores_fn(indices), scale, "values at the returned indices")
    order = values[:, 1:] - values[:, :-1]
    assert bool((order <= 0).all() if largest else (order >= 0).all()), "values not sorted"


@pytest.mark.parametrize("selector", ["heap", "torch-topk"])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("case", CASES)
def test_matches_brute_force(case, metric, selector, monkeypatch):
    if selector == "torch-topk":  # the CUDA path's block top-k and merge, run on CPU
        monkeypatch.setattr(knn_module, "_HeapTopK", knn_module._TorchTopK)
    N, M, D, k, chunk = case
    q = torch.randn(N, D)
    keys = None if M is None else torch.randn(M, D)
    v, i = knn(q, keys, k, metric=metric, chunk=chunk)
    rv, ri = reference.knn(q, keys, k, metric=metric)
    kk = q if keys is None else keys

    def scores(idx):
        qd, kd = q.double(), kk.double()[idx]  # [N, k, D]
        if metric == "cosine":
            kd = torch.nn.functional.normalize(kd, dim=2, eps=1e-10)
            return (reference.norm(qd)[:, None, :] * kd).sum(-1)
        return ((qd[:, None, :] - kd) ** 2).sum(-1)

    scale = 1.0 if metric == "cosine" else float(torch.cat([q, kk]).pow(2).sum(1).max())
    check_neighbours(v, i, rv, ri, scores, metric == "cosine", scale)
    assert v.dtype == torch.float32 and i.dtype == torch.int64 and v.shape == (N, k)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exclude_self(metric):
    q = torch.randn(500, 24)
    v, i = knn(q, k=10, metric=metric, exclude_self=True, chunk=64)
    rv, _ = reference.knn(q, k=10, metric=metric, exclude_self=True)
    assert not (i == torch.arange(500)[:, None]).any()
    scale = 1.0 if metric == "cosine" else float(q.pow(2).sum(1).max())
    close_values(v, rv, scale, "values")
    # Without exclusion each point is its own nearest neighbour.
    _, i_all = knn(q, k=1, metric=metric)
    assert torch.equal(i_all[:, 0], torch.arange(500))


def test_duplicates_and_zero_vectors():
    q = torch.randn(50, 6)
    q[10] = 0.0
    q[20] = q[21]
    v, i = knn(q, k=3)
    assert not torch.isnan(v).any()
    assert {int(i[20, 0]), int(i[20, 1])} == {20, 21}


def test_half_precision_inputs():
    q = torch.randn(200, 32).half()
    v, _ = knn(q, k=4)
    rv, _ = reference.knn(q.float(), k=4)
    close_values(v, rv, 1.0, "values")


BAD = [
    pytest.param(dict(queries=torch.randn(5, 3), k=0), ValueError, "k must be in", id="k0"),
    pytest.param(dict(queries=torch.randn(5, 3), k=6), ValueError, "k must be in", id="k>M"),
    pytest.param(
        dict(queries=torch.randn(5, 3), k=5, exclude_self=True),
        ValueError,
        "k must be in",
        id="k=M-self",
    ),
    pytest.param(
        dict(queries=torch.randn(5, 3), keys=torch.randn(4, 2), k=1),
        ValueError,
        "keys must have shape",
        id="D",
    ),
    pytest.param(
        dict(queries=torch.randn(5, 3), keys=torch.randn(4, 3), k=1, exclude_self=True),
        ValueError,
        "exclude_self=True needs keys=None",
        id="self-keys",
    ),
    pytest.param(
        dict(queries=torch.randn(5, 3), k=1, metric="dot"),
        ValueError,
        "metric must be one of",
        id="metric",
    ),
    pytest.param(
        dict(queries=torch.ones(5, 3, dtype=torch.int64), k=1), TypeError, "floating", id="int"
    ),
    pytest.param(
        dict(queries=torch.randn(5), k=1), ValueError, r"queries must have shape \[N, D\]", id="1d"
    ),
    pytest.param(
        dict(queries=torch.full((5, 3), float("nan")), k=1),
        ValueError,
        "queries must be finite",
        id="nan",
    ),
    pytest.param(
        dict(queries=torch.randn(5, 3), k=1, chunk=0), ValueError, "chunk must be in", id="chunk"
    ),
    pytest.param(
        dict(queries=torch.randn(5, 3), k=1, exclude_self=1),
        TypeError,
        "exclude_self must be a bool",
        id="self-int",
    ),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD)
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        knn(**kwargs)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_cuda_matches_cpu(metric):
    q = torch.randn(3000, 96)
    v, _ = knn(q.cuda(), k=30, metric=metric, exclude_self=True, chunk=700)
    rv, _ = reference.knn(q, k=30, metric=metric, exclude_self=True)
    assert v.device.type == "cuda"
    scale = 1.0 if metric == "cosine" else float(q.pow(2).sum(1).max())
    close_values(v.cpu(), rv, scale, "values")
