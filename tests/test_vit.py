import pytest
import timm
import torch
import torchvision

from lit_vit.errors import ConfigError
from lit_vit.models import VisionTransformer
from lit_vit.models.layers import POS_EMBED_KINDS
from lit_vit.models.weights import load_pretrained


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# the parameter counts of timm's vit_{tiny,small,base,large}_patch16_224 (1000 classes, 224 px)
@pytest.mark.parametrize(
    "variant, expected", [("Ti", 5_717_416), ("S", 22_050_664), ("B", 86_567_656), ("L", 304_326_632)]
)
def test_parameter_counts_match_reference_at_224_16(variant, expected):
    with torch.device("meta"):
        model = VisionTransformer(variant, img_size=224, patch_size=16, num_classes=1000)
    assert n_params(model) == expected


def test_vit_h14_parameter_count_is_reference_number_without_head():
    # 630,764,800 is timm's vit_huge_patch14_224.orig_in21k, the headless in21k release (num_classes=0; the ViT paper's
    # Table 1 rounds it to 632M); a 1000-class head adds 1280 * 1000 + 1000.
    with torch.device("meta"):
        headless = VisionTransformer("H", patch_size=14, num_classes=0)
        with_head = VisionTransformer("H", patch_size=14, num_classes=1000)
    assert n_params(headless) == 630_764_800
    assert n_params(with_head) == 630_764_800 + 1280 * 1000 + 1000


def tiny(**kw) -> VisionTransformer:
    args = dict(img_size=32, patch_size=8, in_chans=3, num_classes=7, embed_dim=32, depth=2, num_heads=4)
    return VisionTransformer(**(args | kw))


@pytest.mark.parametrize("size, grid", [((32, 32), (4, 4)), ((32, 48), (4, 6)), ((56, 24), (7, 3))])
def test_output_shapes_square_and_non_square(size, grid):
    model = tiny(img_size=size, in_chans=1)
    x = torch.randn(2, 1, *size)
    assert model(x).shape == (2, 7)
    assert model.forward_features(x).shape == (2, 1 + grid[0] * grid[1], 32)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, 32)


@pytest.mark.parametrize("pool", ["cls", "gap", "map"])
def test_every_parameter_receives_a_gradient(pool):
    model = tiny(pool=pool, drop_path_rate=0.1)
    model(torch.randn(3, 3, 32, 32)).logsumexp(-1).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


@pytest.mark.parametrize("pool, class_token", [("cls", True), ("gap", True), ("gap", False)])
def test_cls_and_gap_pooling_both_train(pool, class_token):
    torch.manual_seed(0)
    model = tiny(pool=pool, class_token=class_token)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 7, (16,))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_any_number_of_input_channels():
    assert tiny(in_chans=5)(torch.randn(2, 5, 32, 32)).shape == (2, 7)


def test_stochastic_depth_is_active_in_training_only():
    torch.manual_seed(0)
    model = tiny(drop_path_rate=0.5)
    x = torch.randn(4, 3, 32, 32)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(img_size=30), "not divisible by the patch size"),
        (dict(variant="XL"), "unknown ViT variant 'XL'.*Ti, S, B, L, H"),
        (dict(pool="max"), "unknown pool 'max'.*cls, gap, map"),
        (dict(pool="cls", class_token=False), "needs the class token"),
        (dict(pos_embed="rope"), "unknown pos_embed 'rope'"),
        (dict(embed_dim=30, num_heads=4), "not divisible by num_heads"),
    ],
)
def test_bad_configuration_fails_with_a_clear_message(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kwargs)


def test_input_size_not_divisible_by_patch_fails_at_forward():
    with pytest.raises(ConfigError, match="30x32 is not divisible by the patch size 8x8"):
        tiny()(torch.randn(1, 3, 30, 32))


@pytest.mark.parametrize("pool, timm_pool", [("cls", "token"), ("gap", "avg")])
def test_outputs_equal_timm_with_converted_weights(tmp_path, pool, timm_pool):
    torch.manual_seed(0)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, num_classes=7, embed_dim=32, depth=2, num_heads=4, global_pool=timm_pool
    ).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = tiny(pool=pool).eval()
    load_pretrained(ours, tmp_path / "timm.pth", load_head=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_outputs_equal_torchvision_with_converted_weights(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=32, mlp_dim=128, num_classes=7
    ).eval()
    torch.nn.init.normal_(ref.heads.head.weight)  # torchvision zero-initialises its head
    torch.save(ref.state_dict(), tmp_path / "tv.pth")
    ours = tiny().eval()
    load_pretrained(ours, tmp_path / "tv.pth", load_head=True)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_loading_weights_of_another_resolution_gives_timms_model_at_that_resolution(tmp_path):
    from timm.layers import resample_abs_pos_embed

    torch.manual_seed(0)
    kw = dict(patch_size=8, num_classes=7, embed_dim=32, depth=2, num_heads=4)
    ref = timm.models.vision_transformer.VisionTransformer(img_size=32, **kw).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = tiny(img_size=48).eval()
    report = load_pretrained(ours, tmp_path / "timm.pth")
    assert report.skipped_head == ["head.weight", "head.bias"] and report.resampled == ((4, 4), (6, 6))
    assert (report.family, report.layout, report.missing, report.unexpected) == ("vit", "timm", [], [])
    table = ours.pos_embed.pos_embed
    assert table.shape == (1, 1 + 36, 32)
    expected = resample_abs_pos_embed(ref.pos_embed, (6, 6), (4, 4), num_prefix_tokens=1)  # class-token row kept
    torch.testing.assert_close(table, expected, rtol=1e-6, atol=1e-6)
    # the whole model is timm's at 48 px with timm's resampled table (and our head, which was not loaded)
    big = timm.models.vision_transformer.VisionTransformer(img_size=48, **kw).eval()
    big.load_state_dict(ref.state_dict() | {"pos_embed": expected, "head.weight": ours.head.weight,
                                            "head.bias": ours.head.bias})  # fmt: skip
    x = torch.randn(2, 3, 48, 48)
    torch.testing.assert_close(ours(x), big(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pos_embed", POS_EMBED_KINDS)
@pytest.mark.parametrize("layout", ["state_dict", "lightning"])
def test_a_saved_model_loads_back_to_the_same_outputs_and_a_changed_weight_shows(tmp_path, pos_embed, layout):
    torch.manual_seed(0)
    model = tiny(pos_embed=pos_embed).eval()
    for p in model.parameters():  # no zero-initialised tensors left (head, relative bias): every one matters below
        torch.nn.init.normal_(p, std=0.2)
    sd = model.state_dict()
    save = {"state_dict": {f"backbone.{k}": v for k, v in sd.items()}} if layout == "lightning" else sd
    torch.save(save, tmp_path / "a.pth")
    torch.manual_seed(1)
    loaded = tiny(pos_embed=pos_embed).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(loaded(x), model(x))  # another init: the load below has something to do
    assert load_pretrained(loaded, tmp_path / "a.pth", load_head=True).skipped_head == []
    assert loaded.state_dict().keys() == sd.keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in sd.items())
    assert torch.equal(loaded(x), model(x))
    # a file with one changed weight loads that weight, and the outputs show it
    changed = {k: v.clone() for k, v in sd.items()}
    changed["blocks.1.attn.qkv.weight"][0, 0] += 1.0
    torch.save(changed, tmp_path / "b.pth")
    load_pretrained(loaded, tmp_path / "b.pth", load_head=True)
    assert torch.equal(loaded.blocks[1].attn.qkv.weight, changed["blocks.1.attn.qkv.weight"])
    assert not torch.allclose(loaded(x), model(x))


def test_mismatched_checkpoint_names_missing_and_unexpected_keys(tmp_path):
    sd = tiny().state_dict()
    sd["blocks.9.extra.weight"] = torch.zeros(1)
    del sd["blocks.1.norm2.weight"]
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"missing keys: blocks\.1\.norm2\.weight.*unexpected keys: blocks\.9"):
        load_pretrained(tiny(), tmp_path / "bad.pth")


def test_a_file_that_needs_unpickling_code_is_refused(tmp_path):
    torch.save({"model": tiny().state_dict(), "extra": object.__new__(torch.nn.Identity)}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="weights_only=True"):
        load_pretrained(tiny(), tmp_path / "evil.pth")
