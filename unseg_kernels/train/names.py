"""Choice lists shared by the ``unseg`` argument sets and the modules that implement them,
importable without the training extra (so building the command line needs only torch)."""

from __future__ import annotations

DATASETS = ("cocostuff27", "cityscapes", "potsdam", "folder")
RESAMPLE_NAMES = ("nearest", "bilinear", "bicubic")
EXTRA_CLUSTER_MODES = ("drop", "majority")
