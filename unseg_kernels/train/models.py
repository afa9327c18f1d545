"""What a run trains on top of the frozen backbone, one module per recipe.

Both recipes hold a head, a way to score codes against clusters and a linear probe (a 1x1
convolution from codes to classes trained with labels on detached codes: the supervised
upper bound STEGO reports beside its unsupervised scores). ``forward`` returns the training
losses; :meth:`SegmentationModel.code` and the ``*_log_probs`` methods are what evaluation
uses.

- :class:`StegoModel`: :class:`~unseg_kernels.train.heads.StegoHead`,
  :class:`~unseg_kernels.nn.StegoLoss` against each image's nearest neighbour, and a
  :class:`~unseg_kernels.nn.ClusterProbe` trained on detached codes (SPEC sections 2, 5).
- :class:`SmooSegModel`: :class:`~unseg_kernels.train.heads.SmooSegProjector`,
  :class:`~unseg_kernels.nn.SmooSegPredictor` and :class:`~unseg_kernels.nn.SmooSegLoss`
  (SPEC section 3); its clusters are the teacher prototypes.

Example:
    >>> model = StegoModel(384, 70, n_classes=27, loss=StegoLoss(feature_samples=None))
    >>> losses = model(feats, feats_pos, labels)
    >>> losses["loss"].backward()
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import nn

from unseg_kernels.nn import ClusterProbe, SmooSegLoss, SmooSegPredictor, StegoLoss
from unseg_kernels.train.heads import SmooSegProjector, StegoHead

CLUSTER_ALPHA = 2.0  # STEGO evaluates the cluster probe as log_softmax(2 * cos)
IGNORE = -1


def linear_probe_loss(probe: nn.Conv2d, code: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the probe on detached codes, its logits upsampled bilinearly to the
    label resolution (STEGO's linear probe); pixels labelled -1 are ignored. A batch with no
    labelled pixel gives a zero loss that still reaches the probe's parameters (so
    DistributedDataParallel sees every parameter used on every rank)."""
    logits = probe(code.detach())
    logits = F.interpolate(logits, labels.shape[-2:], mode="bilinear", align_corners=False)
    if not (labels != IGNORE).any():
        return logits.sum() * 0
    return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE)


class SegmentationModel(nn.Module, ABC):
    """Head, cluster scores and linear probe of one recipe (see the module docstring)."""

    recipe = ""

    def __init__(self, code_dim: int, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.linear_probe = nn.Conv2d(code_dim, n_classes, 1)

    @property
    @abstractmethod
    def n_clusters(self) -> int:
        """Clusters the unsupervised prediction chooses from."""

    @abstractmethod
    def code(self, feats: torch.Tensor) -> torch.Tensor:
        """Backbone features ``[B, C, h, w]`` -> codes ``[B, D, h, w]``."""

    @abstractmethod
    def cluster_log_probs(self, code: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, D, H, W]`` -> log-probabilities over clusters ``[B, K, H, W]``."""

    def linear_log_probs(self, code: torch.Tensor) -> torch.Tensor:
        """Codes ``[B, D, H, W]`` -> the linear probe's log-probabilities over classes."""
        return F.log_softmax(self.linear_probe(code).float(), dim=1)

    @abstractmethod
    def parameter_groups(self, lr: float, probe_lr: float) -> dict[str, list[dict]]:
        """Optimiser name -> Adam parameter groups (head at ``lr``, probes at ``probe_lr``)."""

    def after_step(self) -> None:
        """Called after every optimiser step (SmooSeg's teacher update)."""


class StegoModel(SegmentationModel):
    """STEGO's head, loss, cluster probe and linear probe.

    Args:
        in_dim: backbone channels C.
        code_dim: code channels D.
        n_classes: classes of the dataset (the linear probe's outputs).
        loss: the correlation loss (its weights, shifts, sampling and backend).
        extra_clusters: cluster probe size beyond ``n_classes``.
    """

    recipe = "stego"

    def __init__(
        self, in_dim: int, code_dim: int, n_classes: int, loss: StegoLoss, extra_clusters: int = 0
    ) -> None:
        super().__init__(code_dim, n_classes)
        self.head = StegoHead(in_dim, code_dim)
        self.cluster_probe = ClusterProbe(n_classes + extra_clusters, code_dim)
        self.loss_fn = loss

    @property
    def n_clusters(self) -> int:
        return self.cluster_probe.n_clusters

    def forward(
        self,
        feats: torch.Tensor,
        feats_pos: torch.Tensor,
        labels: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch: ``loss`` (what to minimise) and each part, detached."""
        feats, code = self.head(feats)
        feats_pos, code_pos = self.head(feats_pos)
        corr = self.loss_fn(feats, feats_pos, code, code_pos, generator=generator)
        cluster_loss, _ = self.cluster_probe(code)
        linear_loss = linear_probe_loss(self.linear_probe, code, labels)
        return {
            "loss": corr.loss + cluster_loss + linear_loss,
            "corr_loss": corr.loss.detach(),
            "self_loss": corr.self_loss.detach(),
            "knn_loss": corr.knn_loss.detach(),
            "rand_loss": corr.rand_loss.detach(),
            "cluster_loss": cluster_loss.detach(),
            "linear_loss": linear_loss.detach(),
        }

    def code(self, feats: torch.Tensor) -> torch.Tensor:
        return self.head(feats).code

    def cluster_log_probs(self, code: torch.Tensor) -> torch.Tensor:
        return self.cluster_probe(code.float(), alpha=CLUSTER_ALPHA, log_probs=True)[1]

    def parameter_groups(self, lr: float, probe_lr: float) -> dict[str, list[dict]]:
        return {
            "head": [{"params": list(self.head.parameters()), "lr": lr}],
            "probes": [
                {"params": list(self.cluster_probe.parameters()), "lr": probe_lr},
                {"params": list(self.linear_probe.parameters()), "lr": probe_lr},
            ],
        }


class SmooSegModel(SegmentationModel):
    """SmooSeg's projector, prototype predictor, smoothness loss and a linear probe.

    Args:
        in_dim: backbone channels C.
        code_dim: projector channels D (64 in the paper).
        n_classes: prototypes K and linear probe outputs.
        loss: the smoothness loss (its shifts and backend).
        tau: teacher temperature.
        ema: teacher momentum; :meth:`after_step` applies it.
        prototype_lr: Adam learning rate of the student prototypes.
    """

    recipe = "smooseg"

    def __init__(
        self,
        in_dim: int,
        code_dim: int,
        n_classes: int,
        loss: SmooSegLoss,
        *,
        tau: float = 0.1,
        ema: float = 0.998,
        prototype_lr: float = 5e-4,
    ) -> None:
        super().__init__(code_dim, n_classes)
        self.prototype_lr = prototype_lr
        self.projector = SmooSegProjector(in_dim, code_dim)
        self.predictor = SmooSegPredictor(n_classes, code_dim, tau=tau, ema=ema)
        self.loss_fn = loss

    @property
    def n_clusters(self) -> int:
        return self.predictor.prototypes.shape[0]

    def forward(
        self,
        feats: torch.Tensor,
        feats_pos: torch.Tensor | None,
        labels: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Losses of one batch (``feats_pos`` is unused: SmooSeg pairs within the batch)."""
        feats, z = self.projector(feats)
        pred = self.predictor(z)
        smooth = self.loss_fn(feats, pred.assign, generator=generator)
        linear_loss = linear_probe_loss(self.linear_probe, z, labels)
        return {
            "loss": smooth.loss + pred.data_loss + linear_loss,
            "smooth_loss": smooth.loss.detach(),
            "intra_loss": smooth.intra_loss.detach(),
            "inter_loss": smooth.inter_loss.detach(),
            "intra_dissimilarity": smooth.intra_dissimilarity,
            "inter_dissimilarity": smooth.inter_dissimilarity,
            "data_loss": pred.data_loss.detach(),
            "linear_loss": linear_loss.detach(),
        }

    def after_step(self) -> None:
        """The teacher's EMA update, after every optimiser step."""
        self.predictor.update_teacher()

    def code(self, feats: torch.Tensor) -> torch.Tensor:
        return self.projector(feats).code

    def cluster_log_probs(self, code: torch.Tensor) -> torch.Tensor:
        teacher = self.predictor(code.float()).teacher_logits
        return F.log_softmax(teacher / self.predictor.tau, dim=1)

    def parameter_groups(self, lr: float, probe_lr: float) -> dict[str, list[dict]]:
        return {
            "head": [{"params": list(self.projector.parameters()), "lr": lr}],
            "probes": [
                {"params": [self.predictor.prototypes], "lr": self.prototype_lr},
                {"params": list(self.linear_probe.parameters()), "lr": probe_lr},
            ],
        }
