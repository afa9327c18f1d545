"""STEGO's full contrastive correlation objective as a module."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from unseg_kernels.nn.sampling import random_coords, sample, super_perm
from unseg_kernels.ops._pair import CdStats, check_pair_inputs
from unseg_kernels.ops.stego import stego_corr_loss
from unseg_kernels.recipes import STEGO_RECIPES


class StegoLossOutput(NamedTuple):
    """What :class:`StegoLoss` returns.

    Attributes:
        loss: the weighted total ``self_weight*self + knn_weight*knn + rand_weight*rand``.
        self_loss, knn_loss, rand_loss: the three terms (``rand`` averages the negatives).
        stats: ``{"self", "knn", "rand"} -> CdStats`` when asked for, else None.
    """

    loss: torch.Tensor
    self_loss: torch.Tensor
    knn_loss: torch.Tensor
    rand_loss: torch.Tensor
    stats: dict[str, CdStats] | None


class StegoLoss(nn.Module):
    """STEGO's contrastive correlation loss (SPEC section 2), fused: a drop-in for STEGO's
    ``ContrastiveCorrelationLoss`` with flags as keyword arguments.

    Terms: ``self`` pairs each image with itself (STEGO's ``pos_intra``), ``knn`` with its
    nearest neighbour (``pos_inter``), ``rand`` with ``neg_samples`` random other images
    drawn by :func:`super_perm` (``neg_inter``; each negative centred separately).

    Args:
        feature_samples: S, points per side sampled with ``grid_sample`` (STEGO's 11), or
            None to use every token (dense: affordable because nothing is materialised).
        neg_samples: negatives per image.
        self_weight, knn_weight, rand_weight: term weights.
        self_shift, knn_shift, rand_shift: term shifts b.
        pointwise, zero_clamp, stabilize, backend, deterministic: as
            :func:`unseg_kernels.stego_corr_loss`.
        return_stats: also return cd statistics per term.

    Defaults are STEGO's COCO-Stuff-27 ViT-S/8 configuration; :meth:`from_recipe` builds the
    other published ones.

    Example:
        >>> loss_fn = StegoLoss(feature_samples=None)
        >>> out = loss_fn(feats, feats_pos, code, code_pos)
        >>> out.loss.backward()
    """

    def __init__(
        self,
        *,
        feature_samples: int | None = 11,
        neg_samples: int = 5,
        self_weight: float = 0.67,
        knn_weight: float = 0.25,
        rand_weight: float = 0.63,
        self_shift: float = 0.08,
        knn_shift: float = 0.02,
        rand_shift: float = 0.66,
        pointwise: bool = True,
        zero_clamp: bool = True,
        stabilize: bool = False,
        backend: str = "auto",
        deterministic: bool | None = None,
        return_stats: bool = False,
    ) -> None:
        super().__init__()
        if feature_samples is not None and (
            isinstance(feature_samples, bool)
            or not isinstance(feature_samples, int)
            or feature_samples < 1
        ):
            raise ValueError(
                f"feature_samples must be a positive int or None, got {feature_samples!r}"
            )
        if isinstance(neg_samples, bool) or not isinstance(neg_samples, int) or neg_samples < 0:
            raise ValueError(f"neg_samples must be a non-negative int, got {neg_samples!r}")
        self.feature_samples = feature_samples
        self.neg_samples = neg_samples
        self.weights = {"self": self_weight, "knn": knn_weight, "rand": rand_weight}
        self.shifts = {"self": self_shift, "knn": knn_shift, "rand": rand_shift}
        self.pair_kwargs = dict(
            pointwise=pointwise, zero_clamp=zero_clamp, stabilize=stabilize, backend=backend,
            deterministic=deterministic, return_stats=return_stats,
        )  # fmt: skip
        self.return_stats = return_stats

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> StegoLoss:
        """A loss with a published recipe's weights and shifts (see ``STEGO_RECIPES``)."""
        if name not in STEGO_RECIPES:
            raise ValueError(f"name must be one of {sorted(STEGO_RECIPES)}, got {name!r}")
        return cls(**{**STEGO_RECIPES[name].loss_kwargs(), **overrides})

    def extra_repr(self) -> str:
        return (
            f"feature_samples={self.feature_samples}, neg_samples={self.neg_samples}, "
            f"weights={self.weights}, shifts={self.shifts}, {self.pair_kwargs}"
        )

    def forward(
        self,
        feats: torch.Tensor,
        feats_pos: torch.Tensor,
        code: torch.Tensor,
        code_pos: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> StegoLossOutput:
        """The weighted objective and its three terms for a batch.

        Args:
            feats: backbone features ``[B, C, H, W]`` (no gradient is taken).
            feats_pos: features of each image's nearest neighbour ``[B, C, H, W]``.
            code: head output ``[B, D, H, W]`` for ``feats``.
            code_pos: head output for ``feats_pos``.
            generator: drives the point sampling and negative permutations (on the
                inputs' device); default the global RNG.
        """
        check_pair_inputs(feats, feats_pos, code, code_pos, ("code", "code_pos"))
        B = feats.shape[0]
        coords1 = coords2 = None
        if self.feature_samples is not None:
            coords1 = random_coords(B, self.feature_samples, feats.device, generator=generator)
            coords2 = random_coords(B, self.feature_samples, feats.device, generator=generator)

        f, c = _at(feats, coords1), _at(code, coords1)
        terms = {
            "self": [self._term(f, f, c, c, "self")],
            "knn": [self._term(f, _at(feats_pos, coords2), c, _at(code_pos, coords2), "knn")],
            "rand": [],
        }
        for _ in range(self.neg_samples):
            perm = super_perm(B, feats.device, generator=generator)
            f_neg, c_neg = _at(feats[perm], coords2), _at(code[perm], coords2)
            terms["rand"].append(self._term(f, f_neg, c, c_neg, "rand"))

        losses, stats = {}, {}
        for name, results in terms.items():
            if not results:  # neg_samples == 0: the term is absent
                losses[name] = torch.zeros_like(losses["self"])
            elif self.return_stats:
                losses[name] = torch.stack([loss for loss, _ in results]).mean()
                stats[name] = CdStats(
                    torch.stack([st.mean for _, st in results]).mean(),
                    torch.stack([st.histogram for _, st in results]).sum(0),
                )
            else:
                losses[name] = torch.stack(results).mean()
        total = sum(self.weights[name] * losses[name] for name in losses)
        return StegoLossOutput(
            total, losses["self"], losses["knn"], losses["rand"],
            stats if self.return_stats else None,
        )  # fmt: skip

    def _term(self, f1, f2, c1, c2, name):
        return stego_corr_loss(f1, f2, c1, c2, self.shifts[name], **self.pair_kwargs)


def _at(t: torch.Tensor, coords: torch.Tensor | None) -> torch.Tensor:
    """``t`` sampled at ``coords``, or every token of ``t`` when ``coords`` is None."""
    return t if coords is None else sample(t, coords)
