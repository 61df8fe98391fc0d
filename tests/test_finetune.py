"""Fine-tuning as the ViT paper does it: pretrained weights of any position-embedding kind loaded at a new image size
(tables resampled in 2-D through the kind's own `resize`), a zero-initialised head, SGD + clipping + cosine."""

import copy

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lit_vit.data import DigitsDataModule
from lit_vit.errors import ConfigError
from lit_vit.models import HybridViT, T2TViT, VisionTransformer
from lit_vit.models.layers import POS_EMBED_KINDS, build_pos_embed
from lit_vit.models.weights import load_pretrained
from lit_vit.modules import ImageClassifier

pytestmark = pytest.mark.usefixtures("one_thread")

VIT_KINDS = [k for k in POS_EMBED_KINDS if k != "sincos_1d"]
# the kinds that store a table (resampled to a new grid); the others compute theirs for any grid
STORED_KINDS = [k for k in POS_EMBED_KINDS if build_pos_embed(k, 16, (2, 2), 1, 2).state_dict()]
T2T_KINDS = STORED_KINDS  # T2T-ViT at a new size: every kind with a table is resampled


def vit(size: int, kind: str, seed: int = 0, **kw) -> VisionTransformer:
    torch.manual_seed(seed)
    args = dict(img_size=size, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    return VisionTransformer(pos_embed=kind, **{**args, **kw}).eval()


def hybrid(size: int, kind: str, seed: int = 0) -> HybridViT:
    """A stem-only hybrid (token stride 4): the CNN feature map of a 16 px digit is a 4x4 token grid."""
    torch.manual_seed(seed)
    args = dict(layers=[], stem_width=8, num_groups=4, patch_size=1, in_chans=1, embed_dim=32, depth=1, num_heads=2)
    return HybridViT(img_size=size, num_classes=10, pos_embed=kind, **args).eval()


def t2t(size: int, kind: str, seed: int = 0) -> T2TViT:
    torch.manual_seed(seed)
    args = dict(embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0, token_dim=8, in_chans=1, num_classes=10)
    return T2TViT(img_size=size, tokens_type="transformer", pos_embed=kind, **args).eval()


def trained_like(model):
    """Position parameters far from their init (a trained model's are not small), so a wrong resampling shows."""
    with torch.no_grad():
        for p in model.pos_embed.parameters():
            p.normal_()
    return model


def save_ckpt(model, path):
    """The layout of a lit_vit ImageClassifier .ckpt: the state dict under `state_dict`, keys `backbone.<name>`."""
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in model.state_dict().items()}, "epoch": 3}, path)
    return str(path)


def features(model, x):
    with torch.no_grad():
        return model.forward_head(model.forward_features(x), pre_logits=True)


def load_at_16_and_24(build, kind: str, tmp_path, n: int) -> tuple:
    """A trained-like model built at 16 px and saved as a checkpoint; loaded at 16 px it gives the same features, and
    at 24 px (4x4 -> 6x6 grid) its stored position tables are resampled. Returns (model, path, 24-px model, report)."""
    a = trained_like(build(16, kind))
    path = save_ckpt(a, tmp_path / "a.ckpt")
    x16 = torch.randn(n, 1, 16, 16)
    same = build(16, kind, seed=1)
    load_pretrained(same, path)
    torch.testing.assert_close(features(same, x16), features(a, x16), rtol=0, atol=0)
    big = build(24, kind, seed=1)
    report = load_pretrained(big, path)
    assert report.resampled == (((4, 4), (6, 6)) if kind in STORED_KINDS else None)
    return a, path, big, report


@pytest.mark.parametrize("kind", VIT_KINDS)
def test_vit_checkpoint_loads_at_the_same_size_unchanged_and_at_a_new_size_as_its_own_resize(kind, tmp_path):
    a, path, big, _ = load_at_16_and_24(vit, kind, tmp_path, n=3)
    x16, x24 = torch.randn(3, 1, 16, 16), torch.randn(3, 1, 24, 24)
    resized = copy.deepcopy(a)
    resized.resize_pos_embed(24)
    for (name, p), (_, q) in zip(big.pos_embed.named_parameters(), resized.pos_embed.named_parameters()):
        assert p.shape == q.shape, name
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # ... and that is the original model evaluated at the new size (resampling on the fly)
    torch.testing.assert_close(features(big, x24), features(a, x24), rtol=1e-5, atol=1e-5)

    bare = vit(24, kind, seed=3)  # a bare state dict (no `backbone.` prefix; sincos_2d / none store no pos keys)
    torch.save(a.state_dict(), tmp_path / "bare.pth")
    load_pretrained(bare, str(tmp_path / "bare.pth"))
    torch.testing.assert_close(features(bare, x24), features(big, x24), rtol=0, atol=0)

    back = vit(16, kind, seed=2)  # and back to the old size from the new-size weights
    load_pretrained(back, save_ckpt(big, tmp_path / "big.ckpt"))
    if kind in ("none", "sincos_2d"):  # nothing grid-shaped is stored: the round trip is exact
        torch.testing.assert_close(features(back, x16), features(a, x16), rtol=0, atol=0)
    else:  # bicubic / linear up- then down-sampling is not invertible; it must equal the two resizes
        twice = copy.deepcopy(resized)
        twice.resize_pos_embed(16)
        torch.testing.assert_close(features(back, x16), features(twice, x16), rtol=0, atol=0)


@pytest.mark.parametrize("kind", VIT_KINDS)
def test_hybrid_checkpoint_loads_at_a_new_size_as_its_own_resize(kind, tmp_path):
    a, _, big, report = load_at_16_and_24(hybrid, kind, tmp_path, n=2)
    assert report.family == "hybrid" and report.skipped_head == ["head.weight", "head.bias"]
    x24 = torch.randn(2, 1, 24, 24)
    torch.testing.assert_close(features(big, x24), features(a, x24), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", T2T_KINDS)
def test_t2t_vit_checkpoint_loads_at_a_new_size_as_its_own_resize(kind, tmp_path):
    a = trained_like(t2t(32, kind))
    path = save_ckpt(a, tmp_path / "a.ckpt")
    same = t2t(32, kind, seed=1)
    load_pretrained(same, path)
    x32, x48 = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(features(same, x32), features(a, x32), rtol=0, atol=0)
    big = t2t(48, kind, seed=1)  # 2x2 -> 3x3 token grid
    report = load_pretrained(big, path)
    assert (report.family, report.layout, report.resampled) == ("t2t_vit", "lit_vit", ((2, 2), (3, 3)))
    torch.testing.assert_close(features(big, x48), features(a, x48), rtol=1e-5, atol=1e-5)


def test_timm_position_table_is_resampled_as_timm_does(tmp_path):
    timm = pytest.importorskip("timm")
    from timm.layers import resample_abs_pos_embed

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=7)
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = VisionTransformer(variant="Ti", img_size=48, patch_size=16, num_classes=10)
    load_pretrained(ours, str(tmp_path / "timm.pth"))
    expected = resample_abs_pos_embed(ref.pos_embed, (3, 3), (2, 2), num_prefix_tokens=1)
    torch.testing.assert_close(ours.pos_embed.pos_embed, expected, rtol=1e-6, atol=1e-6)


def test_a_checkpoint_of_another_kind_or_width_is_refused_with_the_keys(tmp_path):
    path = save_ckpt(vit(16, "learned_2d"), tmp_path / "a.ckpt")
    with pytest.raises(ConfigError, match="missing keys: pos_embed.relative_bias_table"):
        load_pretrained(vit(24, "relative"), path)
    with pytest.raises(ConfigError, match="position embedding does not fit"):
        load_pretrained(vit(24, "learned_2d", embed_dim=16), path)


class Capture(Callback):
    """The backbone as the first training step sees it (after setup loaded the weights)."""

    def on_train_start(self, trainer, pl_module):
        self.backbone = copy.deepcopy(pl_module.backbone)


def fit_one_step(model, *callbacks, ckpt_path=None):
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks))  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(img_size=24, batch_size=8), ckpt_path=ckpt_path)
    return trainer


def test_image_classifier_fine_tunes_a_16px_checkpoint_at_24px_with_a_zero_head(tmp_path):
    a = trained_like(vit(16, "relative"))
    path = save_ckpt(a, tmp_path / "a.ckpt")
    model = ImageClassifier(vit(24, "relative", seed=5), pretrained=path, head_init="zero", optimizer="sgd", lr=0.1,
                            weight_decay=0.0, warmup_steps=1)  # fmt: skip
    seen = Capture()
    fit_one_step(model, seen)
    expected = copy.deepcopy(a)
    expected.resize_pos_embed(24)
    torch.testing.assert_close(seen.backbone.pos_embed.relative_bias_table, expected.pos_embed.relative_bias_table)
    torch.testing.assert_close(seen.backbone.blocks[1].mlp.fc2.weight, a.blocks[1].mlp.fc2.weight)
    assert not seen.backbone.head.weight.any() and not seen.backbone.head.bias.any()
    # after one SGD step only the head has moved (a zero head passes no gradient back)
    assert model.backbone.head.weight.abs().sum() > 0
    torch.testing.assert_close(model.backbone.blocks[0].attn.qkv.weight, a.blocks[0].attn.qkv.weight)


def test_default_head_init_keeps_the_backbones_init_and_bad_values_are_refused():
    model = ImageClassifier(vit(16, "learned_1d"), head_init="default")
    seen = Capture()
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[seen])  # fmt: skip
    trainer.fit(model, datamodule=DigitsDataModule(img_size=16, batch_size=8))
    assert seen.backbone.head.weight.abs().sum() > 0
    with pytest.raises(ConfigError, match="unknown head_init 'xavier'; choose default or zero"):
        ImageClassifier(vit(16, "learned_1d"), head_init="xavier")
