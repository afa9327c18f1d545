"""The frozen ViT backbone (local weights only) and the STEGO / SmooSeg heads."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from unseg_kernels.testing import assert_close
from unseg_kernels.train.backbone import ViTBackbone, read_backbone_weights
from unseg_kernels.train.heads import SmooSegProjector, StegoHead

TINY = "vit_tiny_patch16_224"  # 192 channels, patch 16: the cheapest timm ViT to build
SMALL8 = "vit_small_patch8_224.dino"
SAME = 1e-6  # the same weights through the same code path


def tiny_state(seed: int, name: str = TINY, **kwargs) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, num_classes=0, **kwargs).state_dict()


@pytest.fixture
def images():
    return torch.randn(2, 3, 48, 80)


def test_patch_tokens_shape_and_values(images):
    vit = ViTBackbone(TINY, random_init=True)
    feats = vit(images)
    assert feats.shape == (2, 192, 3, 5)
    tokens = vit.model.forward_features(images)  # [B, 1 + 15, C], after the final norm
    assert_close(feats.flatten(2).transpose(1, 2), tokens[:, 1:], SAME, "patch tokens")
    assert not feats.requires_grad
    assert all(not p.requires_grad for p in vit.parameters())
    vit.train()
    assert not vit.model.training  # frozen: stays in eval mode


def test_register_tokens_are_dropped(images):
    torch.manual_seed(0)
    model = ViTBackbone(TINY, random_init=True)
    regs = timm.create_model(
        TINY, pretrained=False, num_classes=0, reg_tokens=4, dynamic_img_size=True
    )
    model.model = regs.eval()
    assert regs.num_prefix_tokens == 5
    feats = model(images)
    assert_close(feats.flatten(2).transpose(1, 2), regs.forward_features(images)[:, 5:], SAME)


def test_patch8_dino_architecture_any_size():
    vit = ViTBackbone(SMALL8, random_init=True)
    assert (vit.patch_size, vit.embed_dim) == (8, 384)
    assert vit(torch.randn(1, 3, 24, 40)).shape == (1, 384, 3, 5)


def test_weights_round_trip_safetensors_and_torch(tmp_path, images):
    state = tiny_state(1)
    save_file(state, tmp_path / "w.safetensors")
    torch.save(state, tmp_path / "w.pth")
    a = ViTBackbone(TINY, weights=tmp_path / "w.safetensors")
    b = ViTBackbone(TINY, weights=tmp_path / "w.pth")
    assert_close(a(images), b(images), SAME)
    assert torch.equal(a.model.pos_embed, state["pos_embed"])


def test_original_dino_checkpoint_keys(tmp_path, images):
    # DINO's training checkpoints: {"teacher": {"module.backbone.<key>": ..., head.*}}
    state = tiny_state(2)
    teacher = {f"module.backbone.{k}": v for k, v in state.items()}
    teacher["module.head.last_layer.weight"] = torch.zeros(8, 4)
    torch.save({"teacher": teacher, "epoch": 10}, tmp_path / "dino.pth")
    torch.save(state, tmp_path / "plain.pth")
    a = ViTBackbone(TINY, weights=tmp_path / "dino.pth")
    b = ViTBackbone(TINY, weights=tmp_path / "plain.pth")
    assert_close(a(images), b(images), SAME)


def test_no_weights_says_how_to_get_them(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(timm.models, "load_pretrained", no_download)
    with pytest.raises(
        ValueError,
        match=r"(?s)needs a local weights file.*--weights.*pretrained=True.*--random-init",
    ):
        ViTBackbone(SMALL8)
    ViTBackbone(TINY, random_init=True)


def test_weights_for_another_architecture(tmp_path):
    save_file(tiny_state(0), tmp_path / "tiny.safetensors")
    with pytest.raises(
        ValueError,
        match=r"does not fit vit_small.*shape mismatches: "
        r"cls_token: file \(1, 1, 192\) vs model \(1, 1, 384\)",
    ):
        ViTBackbone(SMALL8, weights=tmp_path / "tiny.safetensors")
    state = tiny_state(0)
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    save_file(state, tmp_path / "partial.safetensors")
    with pytest.raises(
        ValueError, match=r"missing keys: norm\.weight; unexpected keys: extra\.weight"
    ):
        ViTBackbone(TINY, weights=tmp_path / "partial.safetensors")


class Opaque:
    """Not a tensor: ``torch.load(weights_only=True)`` refuses to unpickle it."""


def test_unsafe_or_missing_weights_file(tmp_path):
    torch.save({"model": Opaque()}, tmp_path / "pickled.pth")
    with pytest.raises(ValueError, match=r"weights_only=True.*convert it to \.safetensors"):
        ViTBackbone(TINY, weights=tmp_path / "pickled.pth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ViTBackbone(TINY, weights=tmp_path / "missing.safetensors")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="expected a state dict"):
        read_backbone_weights(tmp_path / "list.pth")


def test_bad_backbone_name_and_input():
    with pytest.raises(ValueError, match="is not a timm model"):
        ViTBackbone("vit_nonexistent_patch8", random_init=True)
    with pytest.raises(ValueError, match="is not a timm VisionTransformer"):
        ViTBackbone("resnet18", random_init=True)
    vit = ViTBackbone(TINY, random_init=True)
    with pytest.raises(ValueError, match="multiple of the patch size 16"):
        vit(torch.randn(1, 3, 40, 48))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        vit(torch.randn(3, 32, 32))


@pytest.mark.parametrize(
    "head_cls, act, p", [(StegoHead, torch.nn.ReLU, 0.1), (SmooSegProjector, torch.nn.SiLU, 0.2)]
)
def test_heads_structure_and_math(head_cls, act, p):
    head = head_cls(12, 5)
    assert isinstance(head.cluster2[1], act) and head.dropout.p == p
    x = torch.randn(2, 12, 3, 4)
    head.eval()  # no dropout: code = conv(x) + conv(act(conv(x)))
    feats, code = head(x)
    want = head.cluster1(x) + head.cluster2(x)
    assert_close(code, want, SAME)
    assert feats is x
    head.train()
    feats, code = head(x)
    assert code.shape == (2, 5, 3, 4) and feats.shape == x.shape


def test_heads_draw_dropout_independently():
    calls = []

    class Recorder(torch.nn.Module):
        def forward(self, t):
            calls.append(t)
            return t * (len(calls) + 1)  # a different "mask" per draw

    head = StegoHead(4, 3)
    head.dropout = Recorder()
    x = torch.randn(1, 4, 2, 2)
    feats, code = head(x)
    assert len(calls) == 3  # linear branch, MLP branch, returned features
    assert_close(code, head.cluster1(2 * x) + head.cluster2(3 * x), SAME)
    assert_close(feats, 4 * x, SAME)
    calls.clear()
    head.drop_features = False
    assert head(x).feats is x and len(calls) == 2


def test_head_bad_input():
    with pytest.raises(ValueError, match="in_dim must be a positive int"):
        StegoHead(0, 4)
    with pytest.raises(ValueError, match=r"dropout must be in \[0, 1\)"):
        StegoHead(4, 4, dropout=1.0)
    with pytest.raises(ValueError, match=r"feats must have shape \[B, 8, H, W\]"):
        StegoHead(8, 4)(torch.randn(1, 7, 2, 2))


def test_smooseg_default_code_dim():
    assert SmooSegProjector(16).code_dim == 64
