"""Published hyperparameters of STEGO (SPEC section 2) and SmooSeg (section 3), as presets.

Both train on a frozen DINO backbone at 224 px with patch 8 (28x28 tokens).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StegoRecipe:
    """One published STEGO configuration: head optimiser Adam, zero_clamp on, stabilize
    off. Weights and shifts per pair term: ``self`` (an image with itself), ``knn`` (with a
    nearest neighbour), ``rand`` (with random other images)."""

    backbone: str
    code_dim: int
    batch_size: int
    steps: int
    pointwise: bool
    self_weight: float
    knn_weight: float
    rand_weight: float
    self_shift: float
    knn_shift: float
    rand_shift: float
    lr: float = 5e-4
    neg_samples: int = 5
    num_neighbors: int = 7

    def loss_kwargs(self) -> dict[str, float | bool | int]:
        """The keyword arguments of :class:`unseg_kernels.nn.StegoLoss` this recipe sets."""
        return dict(
            pointwise=self.pointwise,
            neg_samples=self.neg_samples,
            self_weight=self.self_weight,
            knn_weight=self.knn_weight,
            rand_weight=self.rand_weight,
            self_shift=self.self_shift,
            knn_shift=self.knn_shift,
            rand_shift=self.rand_shift,
        )


STEGO_RECIPES: dict[str, StegoRecipe] = {
    # cocostuff27, the released ViT-B/8 checkpoint
    "cocostuff27_vitb8": StegoRecipe(
        "vit_base_patch8_224.dino", 90, 32, 7000, True, 0.1, 1.0, 0.1538, 0.12, 0.2, 1.0
    ),
    # cocostuff27, the ViT-S/8 configuration
    "cocostuff27_vits8": StegoRecipe(
        "vit_small_patch8_224.dino", 70, 16, 5000, True, 0.67, 0.25, 0.63, 0.08, 0.02, 0.66
    ),
    # cityscapes, the released ViT-B/8 checkpoint
    "cityscapes_vitb8": StegoRecipe(
        "vit_base_patch8_224.dino",
        100,
        32,
        7000,
        False,
        1.0,
        0.5775,
        0.9059,
        0.4583,
        0.1754,
        0.3136,
    ),
    # potsdam, the released ViT-S/8 checkpoint
    "potsdam_vits8": StegoRecipe(
        "vit_small_patch8_224.dino", 70, 16, 5000, True, 0.67, 0.25, 0.63, 0.08, 0.02, 0.76
    ),
}


@dataclass(frozen=True)
class SmooSegRecipe:
    """One published SmooSeg configuration (SPEC section 3): 224 px, fp16 autocast,
    projector to ``dim`` channels, prototypes over ``n_classes`` clusters."""

    backbone: str
    n_classes: int
    intra_shift: float
    inter_shift: float
    dim: int = 64
    batch_size: int = 32
    steps: int = 3000
    lr_projector: float = 1e-4
    lr_prototypes: float = 5e-4
    tau: float = 0.1
    ema: float = 0.998


SMOOSEG_RECIPES: dict[str, SmooSegRecipe] = {
    "cocostuff27_vits8": SmooSegRecipe("vit_small_patch8_224.dino", 27, -0.02, 0.48),
    "cityscapes_vits8": SmooSegRecipe("vit_small_patch8_224.dino", 27, -0.02, 0.5),
    "potsdam_vitb8": SmooSegRecipe("vit_base_patch8_224.dino", 3, 0.1, 0.5),
}
