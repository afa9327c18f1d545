"""Frozen ViT backbones (SPEC section 7): the last block's patch tokens after the final norm,
class and register tokens dropped, as a feature map ``[B, C, H/p, W/p]``.

Weights come only from a local file: this module never downloads anything (timm is always
called with ``pretrained=False``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

WEIGHTS_HELP = (
    "Download the weights once on a machine with network access and pass the file, e.g.\n"
    '  python -c "import timm, safetensors.torch as st; '
    "m = timm.create_model('{name}', pretrained=True); "
    "st.save_file(m.state_dict(), '{name}.safetensors')\"\n"
    "(the timm/{name} model repository's model.safetensors works too, and so do DINO's "
    "original *_pretrain.pth checkpoints). Pass random_init=True (--random-init) for an "
    "untrained backbone."
)
# Wrappers and prefixes of training checkpoints: DINO saves {"teacher": {"backbone.x": ..}},
# DataParallel adds "module.", other trainers nest under "state_dict" or "model".
CHECKPOINT_NESTS = ("teacher", "state_dict", "model")
KEY_PREFIXES = ("module.", "backbone.")
MAX_LISTED = 6


def check_images(images: torch.Tensor, patch_size: int) -> tuple[int, int]:
    """Checks that ``images`` is ``[B, 3, H, W]`` with sides divisible by ``patch_size``
    and returns ``(H, W)``."""
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must have shape [B, 3, H, W], got {got}")
    h, w = images.shape[-2:]
    if h % patch_size or w % patch_size:
        raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {patch_size}")
    return int(h), int(w)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses pickled code: say so plainly
        reason = next(
            (ln.strip() for ln in str(e).splitlines() if "Unsupported" in ln), str(e)[:200]
        )
        raise ValueError(
            f"cannot load {path} with torch.load(weights_only=True) ({reason}). Only plain "
            "tensor checkpoints are accepted, never pickled objects; convert it to .safetensors"
        ) from e
    for nest in CHECKPOINT_NESTS:
        if isinstance(obj, Mapping) and nest in obj and isinstance(obj[nest], Mapping):
            obj = obj[nest]
            break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict")
    return dict(obj)


def normalize_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strips DINO's / DataParallel's key prefixes (``module.``, ``backbone.``)."""
    out = {}
    for key, value in state.items():
        for prefix in KEY_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def read_backbone_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A local weights file as a state dict with timm's key names.

    Accepts ``.safetensors`` and ``torch.load(weights_only=True)`` files, timm's key names
    and DINO's original checkpoints (``teacher`` nesting, ``module.``/``backbone.``
    prefixes)."""
    return normalize_state_dict(_read_state_dict(Path(path)))


def load_backbone_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, name: str = "backbone"
) -> None:
    """Loads ``state`` (from :func:`read_backbone_weights`) into ``model`` strictly; a
    projection ``head.*`` the model does not have (DINO's) is dropped.

    Raises:
        ValueError: naming the missing, unexpected and mismatched keys (with shapes) when
            ``source`` (the file) is for another architecture.
    """
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith("head.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:

        def listed(keys: list[str]) -> str:
            more = f" (+{len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else ""
            return ", ".join(keys[:MAX_LISTED]) + more

        parts = [
            f"{label}: {listed(keys)}"
            for label, keys in (
                ("shape mismatches", shapes),
                ("missing keys", missing),
                ("unexpected keys", unexpected),
            )
            if keys
        ]
        raise ValueError(
            f"weights file {source} does not fit {name}; it is probably for another "
            f"architecture. " + "; ".join(parts)
        )
    model.load_state_dict(state, strict=True)


class ViTBackbone(nn.Module):
    """A frozen timm Vision Transformer returning patch-token feature maps.

    Args:
        name: a timm ViT name, e.g. ``vit_small_patch8_224.dino`` (ViT-S/8, 384 channels)
            or ``vit_base_patch8_224.dino`` (ViT-B/8, 768). Any ``VisionTransformer`` works,
            including models with register tokens.
        weights: a local ``.safetensors`` or ``torch.save`` file (timm or DINO key names).
        random_init: allow running without weights (random features; for tests and smoke
            runs).

    Any input whose sides are multiples of the patch size works: the position embedding is
    interpolated (timm's ``dynamic_img_size``, bicubic). The backbone stays in eval mode and
    runs without gradients.

    Example:
        >>> vit = ViTBackbone("vit_small_patch8_224.dino", weights="dino_vits8.safetensors")
        >>> vit(images).shape  # images [B, 3, 224, 224] -> [B, 384, 28, 28]
    """

    def __init__(
        self, name: str, *, weights: str | Path | None = None, random_init: bool = False
    ) -> None:
        super().__init__()
        import timm
        from timm.models.vision_transformer import VisionTransformer

        if weights is None and not random_init:
            raise ValueError(
                f"backbone {name!r} needs a local weights file (weights=PATH, --weights); "
                "nothing is ever downloaded. " + WEIGHTS_HELP.format(name=name)
            )
        state = read_backbone_weights(weights) if weights is not None else None
        if not timm.is_model(name):
            raise ValueError(
                f"backbone {name!r} is not a timm model (see timm.list_models('vit_*'))"
            )
        try:
            model = timm.create_model(name, pretrained=False, num_classes=0, dynamic_img_size=True)
        except TypeError:  # architectures without dynamic_img_size are not ViTs
            model = None
        if not isinstance(model, VisionTransformer):
            raise ValueError(
                f"backbone {name!r} is not a timm VisionTransformer (e.g. "
                "vit_small_patch8_224.dino)"
            )
        if state is not None:
            load_backbone_weights(model, state, source=str(weights), name=name)
        self.name = name
        self.model = model.eval().requires_grad_(False)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.embed_dim = int(model.embed_dim)

    def train(self, mode: bool = True) -> ViTBackbone:
        """The backbone is frozen: it stays in eval mode whatever the caller asks."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``images [B, 3, H, W]`` (ImageNet-normalised) -> features ``[B, C, H/p, W/p]``."""
        h, w = check_images(images, self.patch_size)
        p = self.patch_size
        tokens = self.model.forward_features(images)  # [B, prefix + N, C], final norm applied
        tokens = tokens[:, self.model.num_prefix_tokens :]
        return tokens.transpose(1, 2).reshape(images.shape[0], self.embed_dim, h // p, w // p)


DEMO_BACKBONE = "filterbank"


def build_backbone(
    name: str, *, weights: str | Path | None = None, random_init: bool = False
) -> nn.Module:
    """The backbone called ``name``: a timm ViT (:class:`ViTBackbone`), or ``"filterbank"``,
    the demo's fixed texture descriptor
    (:class:`~unseg_kernels.train.demo.FilterBankBackbone`, no weights). Every backbone has
    ``patch_size``, ``embed_dim`` and maps ``[B, 3, H, W]`` to ``[B, C, H/p, W/p]``."""
    if name == DEMO_BACKBONE:
        from unseg_kernels.train.demo import FilterBankBackbone

        if weights is not None:
            raise ValueError(
                f"backbone {DEMO_BACKBONE!r} is a fixed filter bank: it takes no weights"
            )
        return FilterBankBackbone()
    return ViTBackbone(name, weights=weights, random_init=random_init)
