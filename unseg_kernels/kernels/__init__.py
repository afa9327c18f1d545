"""Kernel implementations behind the public ops. Nothing here validates input or records
autograd: callers in :mod:`unseg_kernels.ops` do both.

The pair-loss sweeps (``torch_pair_loss.sweep``, ``triton_pair_loss.sweep``) share one
contract, documented in :mod:`unseg_kernels.ops._pair`. ``kind`` selects the elementwise
function of the loss:
"""

KIND_STEGO = 0  # l = -clamp(cd, lo, hi) * fd_c, dl/dcd = -fd_c inside [lo, hi]
KIND_SMOOSEG = 1  # l = fd_c * (1 - cd), dl/dcd = -fd_c
