"""Loss modules: hyperparameters only; the work happens in :mod:`unseg_kernels.ops`."""

from unseg_kernels.nn.sampling import super_perm
from unseg_kernels.nn.stego import StegoLoss, StegoLossOutput

__all__ = ["StegoLoss", "StegoLossOutput", "super_perm"]
