"""kmeans / kmeans_plusplus against scikit-learn, faiss, the float64 reference and themselves."""

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from sklearn.cluster import KMeans

from unseg_kernels import kmeans, kmeans_plusplus, reference
from unseg_kernels._native import native
from unseg_kernels.testing import assert_close

# Agreement with scikit-learn and the float64 reference (the native path computes in float32).
INERTIA_RTOL = 1e-4
LABEL_AGREEMENT = 0.999
CENTROID_TOL = 1e-4
# faiss spherical k-means sums in float32 in another order.
FAISS_CENTROID_TOL = 1e-4
# CUDA accumulates in another order (and its dot products round differently).
CUDA_CENTROID_TOL = 1e-4
# k-means++ draws: reject the D^2 law below this chi-square p-value (fixed seed: deterministic).
CHI2_MIN_P = 1e-3

HAS_AVX2 = native().kmeans_cpu_isa(0) == "avx2"
ISAS = ["generic", pytest.param("avx2", marks=pytest.mark.skipif(not HAS_AVX2, reason="no AVX2"))]
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# (N, D, K): D off every vector width, K = 1, K = N, K off the 3-centroid tile, several slabs.
SHAPES = [
    pytest.param((1000, 37, 7), id="odd-D"),
    pytest.param((2003, 384, 27), id="stego"),
    pytest.param((513, 5, 1), id="K1"),
    pytest.param((40, 3, 40), id="K=N"),
    pytest.param((9001, 12, 5), id="slabs"),
]


def blobs(n, d, k, *, batch=None, seed=0, spread=4.0):
    """Gaussian blobs around k random centres, float32 ``[n, d]`` (or ``[batch, n, d]``)."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch,) if batch else ()
    centres = torch.randn(*shape, k, d, generator=g) * spread
    which = torch.randint(0, k, (*shape, n), generator=g)
    picked = torch.gather(centres, -2, which[..., None].expand(*shape, n, d))
    return picked + torch.randn(*shape, n, d, generator=g)


def sklearn_fit(x, init, **kw):
    return KMeans(init.shape[0], init=init.double().numpy(), n_init=1, algorithm="lloyd", **kw).fit(
        x.double().numpy()
    )


def check_against(res, centroids, labels, inertia, name):
    agree = (res.labels == torch.as_tensor(labels)).double().mean().item()
    assert agree >= LABEL_AGREEMENT, f"{name}: only {agree:.5f} of the labels agree"
    assert abs(float(res.inertia) - float(inertia)) <= INERTIA_RTOL * abs(float(inertia)), (
        f"{name}: inertia {float(res.inertia)} vs {float(inertia)}"
    )
    assert_close(res.centroids, torch.as_tensor(centroids), CENTROID_TOL, f"{name} centroids")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_sklearn(shape, isa, monkeypatch):
    monkeypatch.setenv("UNSEG_CPU_ISA", isa)
    N, D, K = shape
    x = blobs(N, D, K)
    init = kmeans_plusplus(x, K, seed=1)
    res = kmeans(x, K, init=init, max_iter=100, tol=1e-4)
    sk = sklearn_fit(x, init, max_iter=100, tol=1e-4)
    check_against(res, sk.cluster_centers_, sk.labels_, sk.inertia_, "sklearn")
    assert 1 <= int(res.n_iter) <= 100


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_matches_reference(metric):
    x = blobs(1500, 21, 6, seed=3)
    init = kmeans_plusplus(x, 9, metric=metric, seed=2)
    res = kmeans(x, 9, metric=metric, init=init, tol=1e-5)
    c, labels, inertia, n_iter = reference.kmeans_lloyd(x, init, metric=metric, tol=1e-5)
    check_against(res, c, labels, inertia, "reference")
    assert int(res.n_iter) == n_iter


def test_cosine_matches_faiss_spherical():
    faiss = pytest.importorskip("faiss")
    x = blobs(3000, 32, 8, seed=4)
    xn = reference.norm(x).float()
    init = kmeans_plusplus(x, 8, metric="cosine", seed=5)
    niter = 15
    res = kmeans(x, 8, metric="cosine", init=init, max_iter=niter, tol=0.0)
    km = faiss.Kmeans(32, 8, niter=niter, spherical=True, max_points_per_centroid=10**6)
    km.train(xn.numpy(), init_centroids=init.numpy())
    _, fl = km.index.search(xn.numpy(), 1)
    agree = (res.labels.numpy() == fl[:, 0]).mean()
    assert agree >= LABEL_AGREEMENT, f"only {agree:.5f} of the labels agree with faiss"
    assert_close(res.centroids, torch.from_numpy(km.centroids), FAISS_CENTROID_TOL, "faiss")
    cos = (xn * res.centroids[res.labels]).sum(1)
    assert_close(res.inertia, (1 - cos).double().sum(), INERTIA_RTOL, "cosine inertia")
    assert_close(res.centroids.norm(dim=1), torch.ones(8), 1e-6, "unit centroids")


def test_labels_are_the_final_assignment():
    x = blobs(4000, 16, 10, seed=6)
    for max_iter in (1, 2, 300):
        res = kmeans(x, 10, max_iter=max_iter, seed=7)
        d = reference._point_distances(x.double(), res.centroids.double(), "euclidean")
        best = d.min(1).values
        chosen = d.gather(1, res.labels[:, None])[:, 0]
        assert_close(chosen, best, 1e-5, f"max_iter={max_iter}")


def test_max_iter_and_tol_stop():
    x = blobs(2000, 8, 5, seed=8)
    assert int(kmeans(x, 5, max_iter=1, seed=0).n_iter) == 1
    loose = int(kmeans(x, 5, tol=1.0, seed=0).n_iter)
    strict = int(kmeans(x, 5, tol=0.0, seed=0).n_iter)
    assert loose <= strict


def test_batched_equals_one_by_one():
    # Several slabs per problem; a batch runs problems side by side, a single problem runs its
    # slabs side by side: the results must still be bitwise equal.
    xb = blobs(9000, 20, 5, batch=3, seed=9)
    init = kmeans_plusplus(xb, 6, seed=10)
    batch = kmeans(xb, 6, init=init, num_threads=2)
    for b in range(3):
        one = kmeans(xb[b], 6, init=init[b], num_threads=2)
        for name in ("centroids", "labels", "inertia", "n_iter"):
            assert torch.equal(getattr(batch, name)[b], getattr(one, name)), (
                f"{name} of problem {b}"
            )


def test_shared_init_for_a_batch():
    xb = blobs(500, 10, 4, batch=2, seed=11)
    init = xb[0, :4].clone()
    before = init.clone()
    shared = kmeans(xb, 4, init=init)
    per = kmeans(xb, 4, init=init.expand(2, 4, 10).contiguous())
    assert torch.equal(shared.centroids, per.centroids)
    assert torch.equal(init, before), "the caller's init was modified"


@pytest.mark.parametrize("num_threads", [1, 3])
def test_thread_count_does_not_change_results(num_threads):
    x = blobs(12000, 9, 4, seed=12)
    ref = kmeans(x, 7, seed=13, num_threads=2)
    other = kmeans(x, 7, seed=13, num_threads=num_threads)
    assert torch.equal(ref.centroids, other.centroids)
    assert torch.equal(ref.labels, other.labels)
    assert torch.equal(ref.inertia, other.inertia)


def test_isas_agree():
    if not HAS_AVX2:
        pytest.skip("no AVX2")
    x = blobs(3000, 45, 8, seed=14)
    init = kmeans_plusplus(x, 8, seed=15)
    res = {}
    for isa in ("generic", "avx2"):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("UNSEG_CPU_ISA", isa)
            res[isa] = kmeans(x, 8, init=init)
    assert (res["generic"].labels == res["avx2"].labels).double().mean() >= LABEL_AGREEMENT
    assert_close(res["avx2"].centroids, res["generic"].centroids, CENTROID_TOL, "avx2 vs generic")


def test_reproducible_for_a_seed():
    x = blobs(3000, 16, 6, seed=16)
    for init in ("k-means++", "random"):
        a = kmeans(x, 6, init=init, seed=17)
        b = kmeans(x, 6, init=init, seed=17)
        c = kmeans(x, 6, init=init, seed=18, max_iter=1)
        d = kmeans(x, 6, init=init, seed=17, max_iter=1)
        assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
        assert not torch.equal(c.centroids, d.centroids)
    torch.manual_seed(0)
    e = kmeans(x, 6)
    torch.manual_seed(0)
    assert torch.equal(kmeans(x, 6).centroids, e.centroids)


def test_random_init_picks_distinct_points():
    x = torch.arange(20, dtype=torch.float32)[:, None].expand(20, 3).contiguous()
    for seed in range(20):
        res = kmeans(x, 20, init="random", seed=seed, max_iter=1)
        # K = N distinct points: every point is its own cluster from the start.
        assert torch.equal(res.labels.sort().values, torch.arange(20))
        assert float(res.inertia) == 0.0


def dsquared_chi2(points, k, draws, seed, device="cpu"):
    """Chi-square p-value of the joint k-means++ picks on `points` [n] (1-D) over `draws`
    problems of one batch (each problem gets its own draws)."""
    n = points.numel()
    x = points[None, :, None].expand(draws, n, 1).contiguous().to(device)
    c = kmeans_plusplus(x, k, seed=seed)[:, :, 0].cpu()  # [draws, k] chosen coordinates
    picks = (c[:, :, None] == points[None, None, :]).float().argmax(-1)  # [draws, k] indices
    # Expected probability of each ordered pick sequence under uniform-then-D^2 sampling.
    probs = {}

    def walk(seq, p):
        if len(seq) == k:
            probs[tuple(seq)] = p
            return
        d2 = torch.stack([(points - points[s]) ** 2 for s in seq]).min(0).values.double()
        for j in range(n):
            if d2[j] > 0:
                walk([*seq, j], p * float(d2[j] / d2.sum()))

    for first in range(n):
        walk([first], 1.0 / n)
    keys = list(probs)
    index = {key: i for i, key in enumerate(keys)}
    observed = np.zeros(len(keys))
    for row in picks.tolist():
        key = tuple(row)
        assert key in index, f"impossible pick sequence {key}"
        observed[index[key]] += 1
    expected = np.array([probs[key] for key in keys]) * draws
    return chisquare(observed, expected).pvalue


@pytest.mark.parametrize("k", [2, 3])
def test_kmeanspp_draws_with_dsquared_probabilities(k):
    points = torch.tensor([0.0, 1.0, 3.0, 6.0, 10.0])
    p = dsquared_chi2(points, k, draws=20000, seed=123)
    assert p > CHI2_MIN_P, f"chi-square p-value {p:.2e}: picks do not follow D^2 sampling"


def test_kmeanspp_all_points_identical():
    x = torch.ones(50, 4)
    c = kmeans_plusplus(x, 5, seed=0)
    assert torch.equal(c, torch.ones(5, 4))
    res = kmeans(x, 5, seed=0)
    assert float(res.inertia) == 0.0 and not torch.isnan(res.centroids).any()


@pytest.mark.parametrize("n_far", [1, 3])
def test_empty_clusters_take_the_farthest_points(n_far):
    x = blobs(800, 6, 4, seed=20)
    init = torch.cat([x[:4], torch.full((n_far, 6), 1e3)])  # far centroids start empty
    K = 4 + n_far
    res = kmeans(x, K, init=init, max_iter=50)
    c, labels, inertia, _ = reference.kmeans_lloyd(x, init, max_iter=50)
    check_against(res, c, labels, inertia, "reference")
    sk = sklearn_fit(x, init, max_iter=50, tol=1e-4)
    check_against(res, sk.cluster_centers_, sk.labels_, sk.inertia_, "sklearn")
    assert torch.bincount(res.labels, minlength=K).min() > 0
    assert not torch.isnan(res.centroids).any()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_compute_in_float32(dtype):
    x = blobs(700, 24, 5, seed=21).to(dtype)
    a = kmeans(x, 5, seed=22)
    b = kmeans(x.float(), 5, seed=22)
    assert a.centroids.dtype == torch.float32 and a.labels.dtype == torch.int64
    assert torch.equal(a.centroids, b.centroids) and torch.equal(a.labels, b.labels)
    assert a.inertia.dtype == torch.float64 and a.n_iter.dtype == torch.int64


def test_result_shapes():
    res = kmeans(torch.randn(100, 7), 4, seed=0)
    assert res.centroids.shape == (4, 7) and res.labels.shape == (100,)
    assert res.inertia.shape == () and res.n_iter.shape == ()
    res = kmeans(torch.randn(3, 100, 7), 4, seed=0)
    assert res.centroids.shape == (3, 4, 7) and res.labels.shape == (3, 100)
    assert res.inertia.shape == (3,) and res.n_iter.shape == (3,)


X = torch.randn(30, 4)
NAN = X.clone()
NAN[3, 1] = float("nan")
INF = X.clone()
INF[0, 0] = float("inf")
BAD_INPUTS = [
    pytest.param(dict(x=X, k=0), ValueError, "k must be in", id="k0"),
    pytest.param(dict(x=X, k=31), ValueError, "k must be in", id="k>N"),
    pytest.param(dict(x=X, k=2.0), TypeError, "k must be an int", id="k-float"),
    pytest.param(dict(x=NAN, k=2), ValueError, "x must be finite", id="nan"),
    pytest.param(dict(x=INF, k=2), ValueError, "x must be finite", id="inf"),
    pytest.param(dict(x=torch.empty(0, 4), k=1), ValueError, "x must not be empty", id="empty"),
    pytest.param(dict(x=torch.empty(5, 0), k=1), ValueError, "x must not be empty", id="D0"),
    pytest.param(dict(x=X[0], k=1), ValueError, "x must have shape", id="1d"),
    pytest.param(
        dict(x=torch.ones(30, 4, dtype=torch.int32), k=2), TypeError, "floating", id="int"
    ),
    pytest.param(dict(x=X.numpy(), k=2), TypeError, "torch.Tensor", id="numpy"),
    pytest.param(dict(x=X, k=2, metric="l2"), ValueError, "metric must be one of", id="metric"),
    pytest.param(dict(x=X, k=2, init="kmeans++"), ValueError, "init must be one of", id="init-str"),
    pytest.param(
        dict(x=X, k=2, init=torch.randn(3, 4)),
        ValueError,
        r"init must have shape \[2, 4\]",
        id="init-K",
    ),
    pytest.param(
        dict(x=X, k=2, init=torch.randn(2, 5)), ValueError, "init must have shape", id="init-D"
    ),
    pytest.param(
        dict(x=X, k=2, init=torch.randn(1, 2, 4)), ValueError, "init must have shape", id="init-3d"
    ),
    pytest.param(
        dict(x=X, k=2, init=torch.ones(2, 4, dtype=torch.long)),
        TypeError,
        "init must be a floating",
        id="init-int",
    ),
    pytest.param(
        dict(x=X, k=2, init=torch.full((2, 4), float("nan"))),
        ValueError,
        "init must be finite",
        id="init-nan",
    ),
    pytest.param(dict(x=X, k=2, max_iter=0), ValueError, "max_iter must be in", id="max_iter"),
    pytest.param(dict(x=X, k=2, tol=-1.0), ValueError, "tol must be >= 0", id="tol"),
    pytest.param(dict(x=X, k=2, seed=-3), ValueError, "seed must be in", id="seed"),
    pytest.param(dict(x=X, k=2, seed="a"), TypeError, "seed must be an int", id="seed-str"),
    pytest.param(dict(x=X, k=2, num_threads=0), ValueError, "num_threads must be in", id="threads"),
]


@pytest.mark.parametrize("kwargs, exc, match", BAD_INPUTS)
def test_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        kmeans(**kwargs)


def test_bad_input_plusplus_and_isa(monkeypatch):
    with pytest.raises(ValueError, match="k must be in"):
        kmeans_plusplus(X, 31)
    with pytest.raises(ValueError, match="metric must be one of"):
        kmeans_plusplus(X, 3, metric="dot")
    monkeypatch.setenv("UNSEG_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="UNSEG_CPU_ISA must be one of"):
        kmeans(X, 2)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("shape", [(4, 784, 70, 27), (1, 20000, 384, 27), (3, 1000, 37, 5)])
def test_cuda_matches_cpu(metric, shape):
    B, N, D, K = shape
    x = blobs(N, D, K, batch=B, seed=30)
    init = kmeans_plusplus(x, K, metric=metric, seed=31)
    cpu = kmeans(x, K, metric=metric, init=init, max_iter=50)
    gpu = kmeans(x.cuda(), K, metric=metric, init=init.cuda(), max_iter=50)
    assert gpu.centroids.device.type == "cuda" and gpu.labels.device.type == "cuda"
    agree = (gpu.labels.cpu() == cpu.labels).double().mean().item()
    assert agree >= LABEL_AGREEMENT, f"only {agree:.5f} of the labels agree"
    assert_close(gpu.centroids, cpu.centroids, CUDA_CENTROID_TOL, "centroids")
    assert_close(gpu.inertia, cpu.inertia, INERTIA_RTOL, "inertia")


@pytest.mark.cuda
@requires_cuda
def test_cuda_kmeanspp_matches_cpu_and_law():
    # The draws come from the same CPU generator on both devices: the picks coincide except
    # where a cumulative sum lands within rounding of a boundary.
    x = blobs(5000, 40, 12, batch=6, seed=32)
    cpu = kmeans_plusplus(x, 12, seed=33)
    gpu = kmeans_plusplus(x.cuda(), 12, seed=33).cpu()
    same = (cpu == gpu).all(-1).double().mean().item()
    assert same >= 0.95, f"only {same:.3f} of the picks coincide"
    points = torch.tensor([0.0, 1.0, 3.0, 6.0, 10.0])
    p = dsquared_chi2(points, 3, draws=20000, seed=124, device="cuda")
    assert p > CHI2_MIN_P, f"chi-square p-value {p:.2e}: CUDA picks do not follow D^2 sampling"


@pytest.mark.cuda
@requires_cuda
def test_cuda_empty_clusters_and_reproducible():
    x = blobs(800, 6, 4, seed=20)
    init = torch.cat([x[:4], torch.full((3, 6), 1e3)])
    cpu = kmeans(x, 7, init=init, max_iter=50)
    gpu = kmeans(x.cuda(), 7, init=init.cuda(), max_iter=50)
    assert (gpu.labels.cpu() == cpu.labels).double().mean() >= LABEL_AGREEMENT
    assert_close(gpu.centroids, cpu.centroids, CUDA_CENTROID_TOL, "centroids")
    again = kmeans(x.cuda(), 7, init=init.cuda(), max_iter=50)
    assert torch.equal(gpu.centroids, again.centroids) and torch.equal(gpu.labels, again.labels)
