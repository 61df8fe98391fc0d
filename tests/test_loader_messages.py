"""What the weight loaders say when a file does not fit: the class-token mismatch named, shape-only mismatches listed
without stray separators, the skipped head reported, HuggingFace save_pretrained folders read, ViLT width mismatches
listed with the checkpoint's size."""

import logging

import pytest
import torch

from lit_vit.errors import ConfigError
from lit_vit.models import VisionTransformer
from lit_vit.models.vilt import ViLT
from lit_vit.models.weights import load_pretrained, read
from lit_vit.models.weights.io import describe_mismatch

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def test_a_timm_file_without_class_token_names_the_class_token_mismatch(tmp_path):
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5, class_token=False,
        global_pool="avg",
    )  # fmt: skip
    torch.save(ref.state_dict(), tmp_path / "gap.pth")
    with pytest.raises(ConfigError, match=r"has no class token .*class_token: false, pool: gap") as err:
        load_pretrained(VisionTransformer(**TINY), str(tmp_path / "gap.pth"))
    assert "square grid" not in str(err.value)
    ours = VisionTransformer(**TINY, class_token=False, pool="gap")
    load_pretrained(ours, str(tmp_path / "gap.pth"))  # the fix the message gives works
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ours.forward_features(x)[:, 0], ref.forward_features(x)[:, 0], atol=1e-5)


def test_a_shape_only_mismatch_lists_the_shapes_without_a_stray_separator(tmp_path):
    torch.save(VisionTransformer(**TINY, mlp_ratio=2.0).state_dict(), tmp_path / "narrow.pth")
    with pytest.raises(ConfigError) as err:
        load_pretrained(VisionTransformer(**TINY), str(tmp_path / "narrow.pth"))
    message = str(err.value)
    assert ": ;" not in message and "missing keys" not in message
    assert "shape mismatches (6; checkpoint vs model): blocks.0.mlp.fc1.weight (64, 32) vs (128, 32)" in message
    assert describe_mismatch([], [], "x", ["a (1,) vs (2,)"]) == (
        "the checkpoint does not match x: shape mismatches (1; checkpoint vs model): a (1,) vs (2,)"
    )


def test_load_pretrained_reports_the_head_it_did_not_load(tmp_path, caplog):
    from lit_vit.modules import ImageClassifier

    torch.save(VisionTransformer(**TINY).state_dict(), tmp_path / "vit.pth")
    ours = VisionTransformer(**TINY)
    assert load_pretrained(ours, str(tmp_path / "vit.pth")).skipped_head == ["head.weight", "head.bias"]
    assert ours.head.weight.shape == (5, 32)

    class DM:  # the DataModule attributes ImageClassifier.setup reads
        num_classes, class_names, in_chans, img_size = 3, ["a", "b", "c"], 3, (32, 32)

    module = ImageClassifier(backbone=VisionTransformer(**TINY), pretrained=str(tmp_path / "vit.pth"))
    module.trainer = type("T", (), {"datamodule": DM(), "ckpt_path": None})()
    with caplog.at_level(logging.INFO):
        module.setup("fit")
    assert "not loaded: head.weight, head.bias (the head is new: 3 classes)" in caplog.text


def hf_config(**kw):
    return transformers.ViltConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=12, image_size=32, patch_size=8, max_image_length=-1, **kw,
    )  # fmt: skip


def vilt(**kw) -> ViLT:
    args = dict(vocab_size=50, max_text_len=12, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)
    return ViLT(**(args | kw))


def test_vilt_reads_a_save_pretrained_folder(tmp_path):
    torch.manual_seed(0)
    hf = transformers.ViltModel(hf_config())
    hf.save_pretrained(tmp_path / "hf")
    sd, meta = read(tmp_path / "hf")
    assert meta["format"] == "safetensors" and meta["path"].endswith("model.safetensors")
    model = vilt()
    load_pretrained(model, sd)
    q = hf.encoder.layer[0].attention.attention.query.weight
    assert torch.equal(model.state_dict()["blocks.0.attn.qkv.weight"][:32], q)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="without model.safetensors or pytorch_model.bin"):
        read(tmp_path / "empty")


def test_vilt_width_mismatch_lists_the_shapes_and_the_checkpoint_width():
    torch.manual_seed(0)
    sd = transformers.ViltModel(hf_config()).state_dict()
    with pytest.raises(ConfigError) as err:
        load_pretrained(vilt(embed_dim=64), sd)
    message = str(err.value)
    assert "shape mismatches" in message and "(1, 1, 32) vs (1, 1, 64)" in message
    assert "holds a ViLT with embed_dim 32, depth 2" in message
