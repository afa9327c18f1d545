"""SmooSeg: the smoothness objective and the teacher-student prototype predictor."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from unseg_kernels import reference
from unseg_kernels.nn.sampling import super_perm
from unseg_kernels.ops.smooseg import smooseg_smooth_loss
from unseg_kernels.recipes import SMOOSEG_RECIPES


class SmooSegLossOutput(NamedTuple):
    """What :class:`SmooSegLoss` returns.

    Attributes:
        loss: ``intra_loss + inter_loss``.
        intra_loss, inter_loss: the two smoothness terms.
        intra_dissimilarity, inter_dissimilarity: mean of ``1 - a_hat . a_hat'`` over each
            term's pairs (detached), the quantity SmooSeg logs.
    """

    loss: torch.Tensor
    intra_loss: torch.Tensor
    inter_loss: torch.Tensor
    intra_dissimilarity: torch.Tensor
    inter_dissimilarity: torch.Tensor


def mean_dissimilarity(a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
    """``mean over (n, i, j) of 1 - norm(a1)_i . norm(a2)_j`` in closed form (detached)."""
    with torch.no_grad():
        p = reference.norm(a1.float()).flatten(2).sum(2)  # [B, K]
        q = reference.norm(a2.float()).flatten(2).sum(2)
        pairs = a1.shape[0] * a1[0, 0].numel() * a2[0, 0].numel()
        return 1 - (p * q).sum() / pairs


class SmooSegLoss(nn.Module):
    """SmooSeg's smoothness loss ``L_intra + L_inter`` (SPEC section 3): every token of each
    image against itself (shift ``intra_shift``) and against one other image drawn by
    :func:`super_perm` (shift ``inter_shift``), each term exact in closed form by default.

    Args:
        intra_shift, inter_shift: the shifts b (defaults: COCO-Stuff-27's).
        pointwise, backend: as :func:`unseg_kernels.smooseg_smooth_loss`.

    Example:
        >>> loss_fn = SmooSegLoss()
        >>> out = loss_fn(feats, predictor(z).assign)
        >>> out.loss.backward()
    """

    def __init__(
        self,
        *,
        intra_shift: float = -0.02,
        inter_shift: float = 0.48,
        pointwise: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        self.intra_shift = intra_shift
        self.inter_shift = inter_shift
        self.pointwise = pointwise
        self.backend = backend

    @classmethod
    def from_recipe(cls, name: str, **overrides) -> SmooSegLoss:
        """A loss with a published recipe's shifts (see ``SMOOSEG_RECIPES``)."""
        if name not in SMOOSEG_RECIPES:
            raise ValueError(f"name must be one of {sorted(SMOOSEG_RECIPES)}, got {name!r}")
        recipe = SMOOSEG_RECIPES[name]
        return cls(
            **{"intra_shift": recipe.intra_shift, "inter_shift": recipe.inter_shift, **overrides}
        )

    def extra_repr(self) -> str:
        return (
            f"intra_shift={self.intra_shift}, inter_shift={self.inter_shift}, "
            f"pointwise={self.pointwise}, backend={self.backend!r}"
        )

    def forward(
        self, feats: torch.Tensor, assign: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> SmooSegLossOutput:
        """The two smoothness terms of a batch.

        Args:
            feats: backbone features for W ``[B, C, H, W]`` (SmooSeg feeds a separately
                dropped-out copy); no gradient is taken.
            assign: the teacher's soft assignments A ``[B, K, H, W]`` (non-negative).
            generator: drives the negative permutation (on the inputs' device).
        """
        kwargs = dict(pointwise=self.pointwise, backend=self.backend)
        intra = smooseg_smooth_loss(feats, feats, assign, assign, self.intra_shift, **kwargs)
        perm = super_perm(feats.shape[0], feats.device, generator=generator)
        neg_feats, neg_assign = feats[perm], assign[perm]
        inter = smooseg_smooth_loss(
            feats, neg_feats, assign, neg_assign, self.inter_shift, **kwargs
        )
        return SmooSegLossOutput(
            intra + inter, intra, inter,
            mean_dissimilarity(assign, assign), mean_dissimilarity(assign, neg_assign),
        )  # fmt: skip


class SmooSegPrediction(NamedTuple):
    """What :class:`SmooSegPredictor` returns for projector outputs z.

    Attributes:
        assign: teacher assignments ``A = softmax(cos(z, sg(P_t)) / tau)`` ``[B, K, H, W]``;
            differentiable w.r.t. z only (feed it to :class:`SmooSegLoss`).
        data_loss: ``cross_entropy(cos(sg(z), P_s), argmax_k cos(z, P_t))``; trains only the
            student prototypes.
        teacher_logits: ``cos(z, P_t)`` ``[B, K, H, W]``.
        student_logits: ``cos(sg(z), P_s)`` ``[B, K, H, W]``.
    """

    assign: torch.Tensor
    data_loss: torch.Tensor
    teacher_logits: torch.Tensor
    student_logits: torch.Tensor


class SmooSegPredictor(nn.Module):
    """SmooSeg's prototype predictor with stop-gradients exactly as SPEC section 3.

    Student prototypes ``P_s`` ``[K, D]`` (a Parameter, Xavier-normal then L2-normalised)
    and teacher prototypes ``P_t`` (a buffer, an EMA of ``P_s``). Call
    :meth:`update_teacher` after every optimiser step.

    Args:
        n_classes: K.
        dim: D, the projector's output channels.
        tau: temperature of the teacher assignments.
        ema: alpha in ``P_t <- alpha * P_t + (1 - alpha) * P_s``.

    Example:
        >>> predictor = SmooSegPredictor(27, 64)
        >>> out = predictor(projector(feats))
        >>> (smooth_loss_fn(feats, out.assign).loss + out.data_loss).backward()
        >>> optimizer.step(); predictor.update_teacher()
    """

    def __init__(self, n_classes: int = 27, dim: int = 64, *, tau: float = 0.1, ema: float = 0.998):
        super().__init__()
        for name, value in (("n_classes", n_classes), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        if not 0 <= ema <= 1:
            raise ValueError(f"ema must be in [0, 1], got {ema!r}")
        self.tau = tau
        self.ema = ema
        prototypes = torch.empty(n_classes, dim)
        nn.init.xavier_normal_(prototypes)
        prototypes = F.normalize(prototypes, dim=1)
        self.prototypes = nn.Parameter(prototypes)
        self.register_buffer("teacher_prototypes", prototypes.clone())

    def extra_repr(self) -> str:
        k, d = self.prototypes.shape
        return f"n_classes={k}, dim={d}, tau={self.tau}, ema={self.ema}"

    def forward(self, z: torch.Tensor) -> SmooSegPrediction:
        """Assignments and data loss for projector outputs.

        Args:
            z: projector output ``[B, D, H, W]``.
        """
        d = self.prototypes.shape[1]
        if not isinstance(z, torch.Tensor) or z.dim() != 4 or z.shape[1] != d:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"z must have shape [B, {d}, H, W], got {got}")
        z_hat = reference.norm(z)
        teacher = torch.einsum("bdhw,kd->bkhw", z_hat, reference.norm(self.teacher_prototypes))
        student = torch.einsum("bdhw,kd->bkhw", z_hat.detach(), reference.norm(self.prototypes))
        assign = torch.softmax(teacher / self.tau, dim=1)
        data_loss = F.cross_entropy(student, teacher.detach().argmax(1))
        return SmooSegPrediction(assign, data_loss, teacher, student)

    @torch.no_grad()
    def update_teacher(self) -> None:
        """The EMA step ``P_t <- ema * P_t + (1 - ema) * P_s``."""
        self.teacher_prototypes.mul_(self.ema).add_(self.prototypes, alpha=1 - self.ema)
