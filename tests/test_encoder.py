"""timm's conveniences on every token encoder (ViT, hybrid, T2T-ViT): `forward_intermediates` equal to timm's for the
same weights, attention maps from the one block loop, and gradient checkpointing with the same outputs and gradients."""

import pytest
import timm
import torch

from lit_vit.models import HybridViT, T2TViT, VisionTransformer
from lit_vit.models.layers import encoder, take_indices
from lit_vit.models.weights import load_pretrained

TINY = dict(img_size=32, patch_size=8, num_classes=7, embed_dim=32, depth=3, num_heads=4)


@pytest.fixture(scope="module")
def vit_and_timm(tmp_path_factory):
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(**TINY).eval()
    path = tmp_path_factory.mktemp("timm") / "timm.pth"
    torch.save(ref.state_dict(), path)
    ours = VisionTransformer(**TINY).eval()
    load_pretrained(ours, path, load_head=True)
    return ours, ref


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(indices=2, norm=True),
        dict(indices=[0, -1], output_fmt="NLC"),
        dict(indices=[1], return_prefix_tokens=True),
        dict(indices=[0], stop_early=True, intermediates_only=True),
        dict(indices=1, stop_early=True, norm=True, output_fmt="NLC"),
    ],
)
def test_forward_intermediates_equal_timms_for_the_same_weights(vit_and_timm, kwargs):
    ours, ref = vit_and_timm
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        mine, theirs = ours.forward_intermediates(x, **kwargs), ref.forward_intermediates(x, **kwargs)
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    if not kwargs.get("intermediates_only"):
        assert len(mine[1]) == len(take_indices(3, kwargs.get("indices")))


def test_forward_intermediates_of_hybrid_and_t2t_end_in_forward_features():
    torch.manual_seed(0)
    hybrid = HybridViT(img_size=32, layers=[1], widths=[16], stem_width=8, num_groups=4, embed_dim=32, depth=2,
                       num_heads=2, num_classes=5)  # fmt: skip
    t2t = T2TViT(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    for model, grid in ((hybrid.eval(), hybrid.grid), (t2t.eval(), t2t.grid)):
        with torch.no_grad():
            final, (last,) = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC")
            (fmap,) = model.forward_intermediates(x, indices=[-1], intermediates_only=True)
            features = model.forward_features(x)
        torch.testing.assert_close(final, features)
        torch.testing.assert_close(last, features[:, 1:])  # the class token split off
        assert fmap.shape == (2, 32, *grid)


def test_attention_maps_are_each_blocks_softmax_over_its_input(vit_and_timm):
    ours, _ = vit_and_timm
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps = ours.attention_maps(x)
        tokens, grid = ours.embed(x)  # the loop the maps were computed with before forward_intermediates
        expected = []
        for block in ours.blocks:
            expected.append(block.attn.attention_probs(block.norm1(tokens)))
            tokens = block(tokens)
    torch.testing.assert_close(maps, expected)
    assert maps[0].shape == (2, 4, 17, 17)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 4, 17))


@pytest.mark.parametrize(
    "make",
    [
        lambda: VisionTransformer(**TINY, pos_embed="rope_2d"),
        lambda: T2TViT(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5, pos_embed="relative"),
    ],
)
def test_grad_checkpointing_gives_the_same_outputs_and_gradients_and_runs_per_block_in_training(make, monkeypatch):
    torch.manual_seed(0)
    model = make().train()
    x = torch.randn(2, 3, 32, 32)

    def outputs_and_grads():
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks (T2T's performer) in both runs
        out = model(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = outputs_and_grads()
    calls = []
    monkeypatch.setattr(
        encoder, "checkpoint", lambda *a, **k: calls.append(1) or torch.utils.checkpoint.checkpoint(*a, **k)
    )
    model.set_grad_checkpointing()
    checkpointed = outputs_and_grads()
    assert len(calls) == len(model.blocks)
    torch.testing.assert_close(checkpointed, plain)
    with torch.no_grad():
        model.eval()(x)
    assert len(calls) == len(model.blocks)  # evaluation runs the blocks as they are
    model.set_grad_checkpointing(False)
    assert not model.grad_checkpointing


@pytest.mark.parametrize("indices, expected", [(None, [0, 1, 2, 3]), (2, [2, 3]), ([0, -1], [0, 3]), ((1,), [1])])
def test_take_indices_follow_timm(indices, expected):
    from timm.models._features import feature_take_indices

    assert take_indices(4, indices) == expected == feature_take_indices(4, indices)[0]


@pytest.mark.parametrize("indices", [0, 5, [4], [-5]])
def test_take_indices_out_of_range_fail(indices):
    with pytest.raises(ValueError, match="out of range"):
        take_indices(4, indices)


def test_t2t_vit_gets_attention_artifacts_with_its_16_pixel_tokens(tmp_path):
    import numpy as np

    from lit_vit.callbacks.artifacts import write_artifacts

    class Images:
        def val_dataloader(self):
            return [(torch.randn(4, 3, 32, 32), torch.zeros(4))]

    model = T2TViT(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5)
    written = write_artifacts(model, Images(), tmp_path, num_images=4, rollout_images=2)
    assert tmp_path / "attention_rollout.png" in written
    with np.load(tmp_path / "attention_distance.npz") as data:
        assert data["distance"].shape == (2, 2)  # blocks x heads
        assert float(data["max_distance"]) == pytest.approx(16 * 2**0.5)  # a 2 x 2 grid of 16-pixel tokens


def test_every_named_vit_size_has_a_factory_importable_by_its_timm_style_name():
    import lit_vit.models
    import lit_vit.models.vit
    from lit_vit.models import VIT_VARIANTS, vit_b, vit_ti  # noqa: F401 - the names users import

    names = [f"vit_{v.lower()}" for v in VIT_VARIANTS]
    assert names == ["vit_ti", "vit_s", "vit_b", "vit_l", "vit_h"]
    assert set(names) <= set(lit_vit.models.__all__)
    for variant, name in zip(VIT_VARIANTS, names, strict=True):
        build = getattr(lit_vit.models, name)
        assert build is getattr(lit_vit.models.vit, name) and build.__name__ == name
        assert f"ViT-{variant}/" in build.__doc__
    model = vit_ti(patch_size=8, img_size=32, num_classes=3)
    assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (192, 12, 3)
    assert model.patch_embed.patch_size == (8, 8)
