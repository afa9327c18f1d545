"""Exact k-nearest neighbours in blocks: no ``[N, M]`` matrix, memory ``O((N + M) D + N k)``.

Each block is one matrix product (numpy's BLAS on CPU, cuBLAS on CUDA) whose scores are folded
into the running top-k of its queries: by bounded heaps in C++ on CPU, by torch.topk and a
merge on CUDA. This is what precomputes STEGO's
neighbour table (SPEC section 7: cosine top-30 over spatially averaged crop features), which
upstream builds from ``N x N/16`` blocks and runs out of memory on large datasets.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from unseg_kernels import _validate
from unseg_kernels._native import native

METRICS = ("cosine", "euclidean")
NORM_EPS = 1e-10
# Scores held at once per block (chunk queries x BLOCK_SCORES // chunk keys): 64 MiB of float32
# on CPU, 256 MiB on CUDA.
BLOCK_SCORES = {"cpu": 1 << 24, "cuda": 1 << 26}
DEFAULT_CHUNK = {"cpu": 2048, "cuda": 8192}
# Key blocks whose candidates are merged at once (bounds the candidates to MERGE_BLOCKS * k).
MERGE_BLOCKS = 16


def _merge(
    vals: list[torch.Tensor], idxs: list[torch.Tensor], k: int, largest: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of several blocks' candidates ``[chunk, k_b]`` (values, key indices)."""
    if len(vals) == 1:
        return vals[0], idxs[0]
    v, i = torch.cat(vals, 1), torch.cat(idxs, 1)
    v, j = v.topk(min(k, v.shape[1]), dim=1, largest=largest)
    return v, i.gather(1, j)


def _block_product(qb: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """``qb @ kb.T`` in float32. On CPU through numpy's BLAS (OpenBLAS): on the AMD CPUs we
    measured it runs this [chunk, D] x [D, keys] shape about 1.5x faster than torch's MKL,
    and it is the BLAS faiss uses."""
    if qb.device.type == "cpu":
        return torch.from_numpy(np.matmul(qb.numpy(), kb.numpy().T))
    return qb @ kb.T


def _matrix(name: str, t: object) -> torch.Tensor:
    _validate.tensor(name, t, "[N, D]")
    if t.device.type not in ("cpu", "cuda"):
        raise ValueError(f"{name} must be on a CPU or CUDA device, got {t.device}")
    return _validate.finite(name, t)


def knn(
    queries: torch.Tensor,
    keys: torch.Tensor | None = None,
    k: int = 30,
    *,
    metric: str = "cosine",
    exclude_self: bool = False,
    chunk: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k neighbours of every query among the keys, computed block by block.

    Args:
        queries: ``[N, D]``, any float dtype (computed in float32), CPU or CUDA.
        keys: ``[M, D]`` on the same device, or None to search the queries themselves.
        k: neighbours per query, ``1 <= k <= M`` (``M - 1`` with ``exclude_self``). STEGO uses
            30, its own crop included at rank 0.
        metric: "cosine": values are cosine similarities (vectors L2-normalised with eps
            1e-10), largest first; "euclidean": values are squared L2 distances, smallest
            first.
        exclude_self: with ``keys=None``, leave each query's own index out of its neighbours.
        chunk: queries per block (default 2048 on CPU, 8192 on CUDA); each block scores
            ``chunk`` queries against ``2**24 // chunk`` keys on CPU (``2**26 // chunk`` on
            CUDA).

    Returns:
        ``(values, indices)``, ``[N, k]`` float32 and int64. Equal scores come in an
        unspecified order.

    Example:
        >>> feats = torch.randn(10_000, 384)
        >>> sims, idx = knn(feats, k=30)  # idx[:, 0] is each crop itself
        >>> sims.shape, idx.shape
        (torch.Size([10000, 30]), torch.Size([10000, 30]))
    """
    q = _matrix("queries", queries)
    if keys is None:
        kk = q
    else:
        kk = _matrix("keys", keys)
        if kk.shape[1] != q.shape[1]:
            raise ValueError(
                f"keys must have shape [M, D] with D={q.shape[1]} as queries, got {tuple(kk.shape)}"
            )
        _validate.same_device(queries=q, keys=kk)
        if exclude_self:
            raise ValueError(
                "exclude_self=True needs keys=None (the queries searched against themselves)"
            )
    metric = _validate.choice("metric", metric, METRICS)
    if not isinstance(exclude_self, bool):
        raise TypeError(f"exclude_self must be a bool, got {type(exclude_self).__name__}")
    M = kk.shape[0]
    k = _validate.integer("k", k, 1, M - 1 if exclude_self else M)
    device = q.device.type
    chunk = DEFAULT_CHUNK[device] if chunk is None else _validate.integer("chunk", chunk, 1)
    key_block = max(BLOCK_SCORES[device] // chunk, 1)

    cosine = metric == "cosine"
    q = q.to(torch.float32)
    kk = q if keys is None else kk.to(torch.float32)
    if cosine:
        q = F.normalize(q, dim=1, eps=NORM_EPS)
        kk = q if keys is None else F.normalize(kk, dim=1, eps=NORM_EPS)
        q_sq = k_sq = None
    else:
        q_sq = (q * q).sum(1)
        k_sq = q_sq if keys is None else (kk * kk).sum(1)
    selector = _HeapTopK if q.device.type == "cpu" else _TorchTopK
    return _blocked_topk(q, kk, q_sq, k_sq, k, cosine, exclude_self, chunk, key_block, selector)


class _TorchTopK:
    """torch.topk of each block, candidates merged MERGE_BLOCKS blocks at a time (one top-k
    over their concatenation: a top-k of a short row costs about as much as of a long one).
    The CUDA path."""

    def __init__(self, rows: int, k: int, largest: bool, device: torch.device) -> None:
        self.k, self.largest = k, largest
        self.vals: list[torch.Tensor] = []
        self.idxs: list[torch.Tensor] = []

    def add(self, scores: torch.Tensor, offset: int) -> None:
        v, i = scores.topk(min(self.k, scores.shape[1]), dim=1, largest=self.largest)
        self.vals.append(v)
        self.idxs.append(i + offset)
        if len(self.vals) == MERGE_BLOCKS:
            v, i = _merge(self.vals, self.idxs, self.k, self.largest)
            self.vals, self.idxs = [v], [i]

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        return _merge(self.vals, self.idxs, self.k, self.largest)


class _HeapTopK:
    """A bounded heap per row in C++: a score costs one comparison unless it enters the top-k
    (torch.topk on CPU costs about a third of the block's matrix product). The CPU path."""

    def __init__(self, rows: int, k: int, largest: bool, device: torch.device) -> None:
        self.k, self.largest = k, largest
        fill = float("-inf") if largest else float("inf")
        self.values = torch.full((rows, k), fill, dtype=torch.float32)
        self.indices = torch.full((rows, k), -1, dtype=torch.int64)

    def add(self, scores: torch.Tensor, offset: int) -> None:
        scores = scores.contiguous()
        native().topk_update_cpu(
            scores.data_ptr(), scores.shape[0], scores.shape[1], scores.stride(0), offset,
            self.k, self.largest, self.values.data_ptr(), self.indices.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip

    def result(self) -> tuple[torch.Tensor, torch.Tensor]:
        values, order = self.values.sort(dim=1, descending=self.largest)
        return values, self.indices.gather(1, order)


def _blocked_topk(
    q: torch.Tensor,
    kk: torch.Tensor,
    q_sq: torch.Tensor | None,
    k_sq: torch.Tensor | None,
    k: int,
    cosine: bool,
    exclude_self: bool,
    chunk: int,
    key_block: int,
    selector: type[_TorchTopK] | type[_HeapTopK],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of prepared (float32, normalised for cosine) queries against keys, block by
    block; ``selector`` keeps each query chunk's running top-k."""
    N, M = q.shape[0], kk.shape[0]
    fill = float("-inf") if cosine else float("inf")
    values = torch.empty((N, k), dtype=torch.float32, device=q.device)
    indices = torch.empty((N, k), dtype=torch.int64, device=q.device)
    for q0 in range(0, N, chunk):
        qb = q[q0 : q0 + chunk]
        best = selector(qb.shape[0], k, cosine, q.device)
        for k0 in range(0, M, key_block):
            kb = kk[k0 : k0 + key_block]
            scores = _block_product(qb, kb)  # [chunk, key_block]
            if not cosine:
                # ||q||^2 - 2 q.k + ||k||^2, clamped: rounding can make it slightly negative.
                scores = (
                    q_sq[q0 : q0 + chunk, None] - 2.0 * scores + k_sq[None, k0 : k0 + kb.shape[0]]
                )
                scores.clamp_(min=0.0)
            if exclude_self:
                rows = torch.arange(qb.shape[0], device=q.device)
                cols = rows + (q0 - k0)
                mine = (cols >= 0) & (cols < kb.shape[0])
                scores[rows[mine], cols[mine]] = fill
            best.add(scores, k0)
        values[q0 : q0 + chunk], indices[q0 : q0 + chunk] = best.result()
    return values, indices
