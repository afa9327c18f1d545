"""STEGO's cluster probe: minibatch spherical k-means learned by gradient descent (SPEC
section 5), with an initialisation from :func:`unseg_kernels.kmeans`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from unseg_kernels import _validate
from unseg_kernels.ops.kmeans import KMeansResult, kmeans
from unseg_kernels.reference import norm


class ClusterProbe(nn.Module):
    """K unit centroids scored against codes by cosine similarity, as STEGO's
    ``ClusterLookup`` (a drop-in with the constructor arguments in the order
    ``(n_clusters, dim)``).

    ``clusters`` ``[K, D]`` starts as ``randn`` (STEGO) or from :meth:`init_from_kmeans`;
    STEGO trains it with Adam at lr 5e-3 on the loss below.

    Args:
        n_clusters: K.
        dim: D, the code width.

    Example:
        >>> probe = ClusterProbe(27, 70)
        >>> loss, probs = probe(code)  # training: hard assignment, code is detached
        >>> _, log_probs = probe(code, alpha=2.0, log_probs=True)  # evaluation
    """

    def __init__(self, n_clusters: int, dim: int) -> None:
        super().__init__()
        self.n_clusters = _validate.integer("n_clusters", n_clusters, 1)
        self.dim = _validate.integer("dim", dim, 1)
        self.clusters = nn.Parameter(torch.randn(self.n_clusters, self.dim))

    def extra_repr(self) -> str:
        return f"n_clusters={self.n_clusters}, dim={self.dim}"

    def reset_parameters(self) -> None:
        """Draws the centroids again from ``randn`` (STEGO's reset)."""
        with torch.no_grad():
            self.clusters.copy_(torch.randn_like(self.clusters))

    def _check_code(self, code: object) -> torch.Tensor:
        _validate.tensor("code", code, "[B, D, H, W]")
        if code.shape[1] != self.dim:
            raise ValueError(
                f"code must have shape [B, D, H, W] with D={self.dim}, got {tuple(code.shape)}"
            )
        return code

    def cosine(self, code: torch.Tensor) -> torch.Tensor:
        """``[B, D, H, W] -> [B, K, H, W]``: cosine of every code with every centroid
        (both L2-normalised with eps 1e-10)."""
        self._check_code(code)
        clusters = norm(self.clusters).to(code.dtype)
        return torch.einsum("bchw,kc->bkhw", norm(code), clusters)

    def forward(
        self, code: torch.Tensor, alpha: float | None = None, log_probs: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores codes against the centroids.

        ``code`` is detached: the probe's loss trains only the centroids (STEGO feeds it
        ``code.detach()``).

        Args:
            code: ``[B, D, H, W]``.
            alpha: None for the hard assignment (training), or the softmax temperature
                multiplier (STEGO evaluates with 2).
            log_probs: return ``log_softmax(alpha * cos)`` instead of the probabilities
                (needs ``alpha``; STEGO's evaluation path).

        Returns:
            ``(loss, probs)``: ``loss = -mean over pixels of sum_k probs * cos`` (with
            ``alpha=None`` that is ``-mean max_k cos``), and ``probs`` ``[B, K, H, W]``: the
            one-hot argmax, ``softmax(alpha * cos)``, or its log with ``log_probs``.
        """
        if alpha is not None:
            alpha = _validate.real("alpha", alpha)
        elif log_probs:
            raise ValueError("log_probs=True needs alpha (log_softmax(alpha * cos))")
        cos = self.cosine(code.detach())
        if alpha is None:
            probs = F.one_hot(cos.argmax(dim=1), self.n_clusters).permute(0, 3, 1, 2).to(cos.dtype)
        else:
            probs = F.softmax(cos * alpha, dim=1)
        loss = -(probs * cos).sum(dim=1).mean()
        if log_probs:
            return loss, F.log_softmax(cos * alpha, dim=1)
        return loss, probs

    @torch.no_grad()
    def init_from_kmeans(self, codes: torch.Tensor, **kmeans_kwargs) -> KMeansResult:
        """Sets the centroids to spherical k-means centroids of ``codes``.

        Args:
            codes: ``[B, D, H, W]`` code maps (every pixel is a point) or points ``[N, D]``.
            **kmeans_kwargs: ``init``, ``max_iter``, ``tol``, ``seed``, ``num_threads`` of
                :func:`unseg_kernels.kmeans` (the metric is always "cosine").

        Returns:
            The :class:`~unseg_kernels.KMeansResult` of the clustering.
        """
        if "metric" in kmeans_kwargs:
            raise ValueError("init_from_kmeans always clusters with metric='cosine'")
        if isinstance(codes, torch.Tensor) and codes.dim() == 4:
            points = self._check_code(codes).permute(0, 2, 3, 1).reshape(-1, self.dim)
        else:
            _validate.tensor("codes", codes, "[N, D]")
            if codes.shape[1] != self.dim:
                raise ValueError(
                    f"codes must have shape [N, D] or [B, D, H, W] with D={self.dim}, "
                    f"got {tuple(codes.shape)}"
                )
            points = codes
        result = kmeans(points, self.n_clusters, metric="cosine", **kmeans_kwargs)
        self.clusters.copy_(result.centroids.to(self.clusters))
        return result
