"""Loss and probe modules: hyperparameters and parameters only; the work happens in
:mod:`unseg_kernels.ops`."""

from unseg_kernels.nn.cluster_probe import ClusterProbe
from unseg_kernels.nn.sampling import super_perm
from unseg_kernels.nn.smooseg import (
    SmooSegLoss,
    SmooSegLossOutput,
    SmooSegPrediction,
    SmooSegPredictor,
)
from unseg_kernels.nn.stego import StegoLoss, StegoLossOutput

__all__ = [
    "ClusterProbe",
    "SmooSegLoss",
    "SmooSegLossOutput",
    "SmooSegPrediction",
    "SmooSegPredictor",
    "StegoLoss",
    "StegoLossOutput",
    "super_perm",
]
