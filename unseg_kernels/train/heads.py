"""Trainable heads on frozen backbone features: STEGO's segmentation head (SPEC section 7)
and SmooSeg's projector (SPEC section 3). Both are a linear 1x1 projection plus a two-layer
1x1 MLP, each fed an independently dropped-out copy of the features, and both also return a
third dropped-out copy of the features: the copy the correlation losses compare (STEGO's
``cfg.dropout=True``, SmooSeg's "separately dropped-out copy").
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


class HeadOutput(NamedTuple):
    """What a head returns.

    Attributes:
        feats: the backbone features, dropped out independently (``drop_features=True``) or
            unchanged, ``[B, C, H, W]``; the losses' feature correlations use these.
        code: the head's output ``[B, D, H, W]``.
    """

    feats: torch.Tensor
    code: torch.Tensor


class ProjectionHead(nn.Module):
    """``code = cluster1(drop(x)) + cluster2(drop(x))`` with ``cluster1 = Conv1x1(C->D)`` and
    ``cluster2 = Conv1x1(C->C), act, Conv1x1(C->D)``; every ``drop`` is a fresh
    ``Dropout2d(dropout)`` draw.

    Args:
        in_dim: backbone channels C.
        code_dim: output channels D.
        dropout: Dropout2d probability (whole channels are dropped).
        activation: the MLP's nonlinearity.
        drop_features: also return a dropped-out copy of the features (else the input).

    Example:
        >>> head = ProjectionHead(384, 70, dropout=0.1, activation=nn.ReLU())
        >>> feats, code = head(backbone(images))  # code [B, 70, 28, 28]
    """

    def __init__(
        self,
        in_dim: int,
        code_dim: int,
        *,
        dropout: float,
        activation: nn.Module,
        drop_features: bool = True,
    ) -> None:
        super().__init__()
        for arg, value in (("in_dim", in_dim), ("code_dim", code_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.in_dim, self.code_dim, self.drop_features = in_dim, code_dim, drop_features
        self.dropout = nn.Dropout2d(dropout)
        # Upstream's module names (cluster1 linear, cluster2 MLP), so the parameter names of
        # STEGO's and SmooSeg's released checkpoints map onto these one to one.
        self.cluster1 = nn.Sequential(nn.Conv2d(in_dim, code_dim, 1))
        self.cluster2 = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, 1), activation, nn.Conv2d(in_dim, code_dim, 1)
        )

    def forward(self, feats: torch.Tensor) -> HeadOutput:
        """``feats [B, C, H, W]`` -> :class:`HeadOutput` (``code [B, D, H, W]``)."""
        if feats.dim() != 4 or feats.shape[1] != self.in_dim:
            raise ValueError(
                f"feats must have shape [B, {self.in_dim}, H, W], got {tuple(feats.shape)}"
            )
        code = self.cluster1(self.dropout(feats)) + self.cluster2(self.dropout(feats))
        return HeadOutput(self.dropout(feats) if self.drop_features else feats, code)


class StegoHead(ProjectionHead):
    """STEGO's segmentation head: ReLU MLP, ``Dropout2d(0.1)``.

    Example:
        >>> head = StegoHead(384, 70)
        >>> feats, code = head(torch.randn(2, 384, 28, 28))
    """

    def __init__(
        self, in_dim: int, code_dim: int, *, dropout: float = 0.1, drop_features: bool = True
    ):
        super().__init__(
            in_dim, code_dim, dropout=dropout, activation=nn.ReLU(), drop_features=drop_features
        )


class SmooSegProjector(ProjectionHead):
    """SmooSeg's projector h: SiLU MLP, ``Dropout2d(0.2)``, D = 64 by default.

    Example:
        >>> proj = SmooSegProjector(384)
        >>> feats, z = proj(torch.randn(2, 384, 28, 28))  # z [2, 64, 28, 28]
    """

    def __init__(
        self, in_dim: int, code_dim: int = 64, *, dropout: float = 0.2, drop_features: bool = True
    ):
        super().__init__(
            in_dim, code_dim, dropout=dropout, activation=nn.SiLU(), drop_features=drop_features
        )
