import pytest
import timm
import torch
from timm.models.vision_transformer_hybrid import checkpoint_filter_fn

from lit_vit.errors import ConfigError
from lit_vit.models import HybridViT, VisionTransformer
from lit_vit.models.layers import POS_EMBED_KINDS
from lit_vit.models.weights import load_pretrained


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


pytestmark = pytest.mark.usefixtures("one_thread")


# The issue's counts are timm's default models: vit_base_r50_s16_224's default weights tag (orig_in21k) has no head,
# so its 97,890,112 is the headless model; the others carry a 1000-class head.
@pytest.mark.parametrize(
    "variant, timm_name, num_classes, expected",
    [
        ("R50+ViT-B/16", "vit_base_r50_s16_224", 0, 97_890_112),
        ("R50+ViT-B/16", "vit_base_r50_s16_224", 1000, 97_890_112 + 768 * 1000 + 1000),
        ("R26+ViT-S/32", "vit_small_r26_s32_224", 1000, 36_431_912),
        ("R-Ti/16", "vit_tiny_r_s16_p8_224", 1000, 6_337_704),
        ("R50+ViT-L/32", "vit_large_r50_s32_224", 1000, 328_994_856),
    ],
)
def test_parameter_counts_equal_the_stated_numbers_and_timm(variant, timm_name, num_classes, expected):
    with torch.device("meta"):
        ours = HybridViT(variant, num_classes=num_classes)
        by_timm_name = HybridViT(timm_name, num_classes=num_classes)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=num_classes)
    assert n_params(ours) == n_params(by_timm_name) == expected
    assert n_params(ref) == expected


@pytest.mark.parametrize(
    "timm_name", ["vit_base_r50_s16_384", "vit_tiny_r_s16_p8_384", "vit_small_r26_s32_384", "vit_large_r50_s32_384"]
)
def test_timm_384_names_build_timms_384_models(timm_name):
    with torch.device("meta"):
        ours = HybridViT(timm_name)
        ref = timm.create_model(timm_name, pretrained=False, num_classes=1000)
    assert ours.img_size == (384, 384) and ours.pos_embed.pos_embed.shape == ref.pos_embed.shape
    assert n_params(ours) == n_params(ref)  # vit_base_r50_s16_384: 98,950,952


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Weights far from init, so that attention is peaked and every path matters (norm gains around 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith("qkv.weight"):
                p.copy_(noise * 2 / p.shape[1] ** 0.5)  # large q / k: peaked attention
            elif "pos_embed" in name or "cls_token" in name:
                p.copy_(noise)  # tokens that differ by position
            else:
                p.copy_(noise * 0.5 / max(p[0].numel(), 1) ** 0.5 if p.ndim > 1 else 0.1 * noise)
    return model


# the big two run at 128 px (same weights, a smaller token grid) and R50+ViT-L/32 with 4 of its 24 blocks (every
# block has the same layout; its full size is checked by the parameter counts) to keep the test fast on a CPU
@pytest.mark.slow
@pytest.mark.parametrize(
    "timm_name, size, depth",
    [
        ("vit_tiny_r_s16_p8_224", 224, None),
        ("vit_small_r26_s32_224", 224, None),
        ("vit_base_r50_s16_224", 128, None),
        ("vit_large_r50_s32_224", 128, 4),
    ],
)
def test_outputs_equal_timm_for_the_same_random_weights(tmp_path, timm_name, size, depth):
    # built on the meta device and materialised empty: every parameter is then set by randomise / the loader, and the
    # two inits of a big model are skipped
    blocks = {} if depth is None else {"depth": depth}
    with torch.device("meta"):
        ref = timm.create_model(timm_name, pretrained=False, num_classes=10, img_size=size, **blocks)
        ours = HybridViT(timm_name, num_classes=10, img_size=size, **blocks)
    assert len(ours.blocks) == len(ref.blocks) == (depth or len(ref.blocks))
    ref = randomise(ref.to_empty(device="cpu")).eval()
    assert not list(ref.buffers()) and not list(ours.buffers())  # nothing left uninitialised by to_empty
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = ours.to_empty(device="cpu").eval()
    assert load_pretrained(ours, tmp_path / "timm.pth", load_head=True).skipped_head == []
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
        attn = ours.attention_maps(x)[-1]
    assert attn.amax(-1).mean() > 5 / attn.shape[-1]  # far from uniform: parity is not trivially met
    assert expected.std() > 0.1


@pytest.mark.parametrize("padding", ["same", "symmetric"])
def test_small_custom_hybrid_equals_timm_with_both_paddings_and_odd_sizes(tmp_path, padding):
    # 40 px is not a power of two: 'same' pads asymmetrically in the stem and the strided 3x3 convs
    from functools import partial

    from timm.layers import GroupNormAct, HybridEmbed, StdConv2d, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2

    conv = partial(StdConv2dSame if padding == "same" else StdConv2d, eps=1e-8)
    cnn = ResNetV2(
        layers=(1, 2), channels=(32, 64), num_classes=0, global_pool="", in_chans=2, preact=False, stem_chs=16,
        stem_type="same" if padding == "same" else "", conv_layer=conv, norm_layer=partial(GroupNormAct, num_groups=4),
    )  # fmt: skip
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=40, patch_size=1, in_chans=2, num_classes=5, embed_dim=32, depth=2, num_heads=4, global_pool="avg",
        embed_layer=partial(HybridEmbed, backbone=cnn),
    )  # fmt: skip
    randomise(ref).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = HybridViT(
        img_size=40, in_chans=2, num_classes=5, layers=[1, 2], widths=[32, 64], stem_width=16, num_groups=4,
        padding=padding, embed_dim=32, depth=2, num_heads=4, pool="gap",
    ).eval()  # fmt: skip
    load_pretrained(ours, tmp_path / "timm.pth", load_head=True)
    x = torch.randn(3, 2, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
    assert ours.grid == (5, 5) and ours.patch_embed.patch_size == (8, 8)


def test_weights_of_224_loaded_at_384_equal_timm_resampling(tmp_path):
    torch.manual_seed(0)
    ref224 = randomise(timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, num_classes=10))
    torch.save(ref224.state_dict(), tmp_path / "timm224.pth")
    ref384 = timm.create_model("vit_tiny_r_s16_p8_384", pretrained=False, num_classes=10).eval()
    ref384.load_state_dict(checkpoint_filter_fn(ref224.state_dict(), ref384))  # timm's own table resampling
    ours = HybridViT("R-Ti/16", img_size=384, num_classes=10).eval()
    load_pretrained(ours, tmp_path / "timm224.pth", load_head=True)
    assert ours.pos_embed.pos_embed.shape == ref384.pos_embed.shape == (1, 1 + 12 * 12, 192)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref384(x), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_timm_384_name_builds_the_384_model_and_equals_timm(tmp_path):
    ref = randomise(timm.create_model("vit_small_r26_s32_384", pretrained=False, num_classes=10)).eval()
    torch.save(ref.state_dict(), tmp_path / "timm.pth")
    ours = HybridViT("vit_small_r26_s32_384", num_classes=10).eval()
    assert ours.img_size == (384, 384) and ours.grid == (12, 12)
    load_pretrained(ours, tmp_path / "timm.pth", load_head=True)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def tiny(**kw) -> HybridViT:
    args = dict(img_size=16, in_chans=1, num_classes=10, layers=[1], widths=[64], stem_width=32, num_groups=8)
    return HybridViT(**(args | dict(embed_dim=32, depth=2, num_heads=4) | kw))


@pytest.mark.parametrize("pos_embed", POS_EMBED_KINDS)
@pytest.mark.parametrize("pool", ["cls", "gap", "map"])
def test_every_pos_embed_and_pool_of_the_vit_works_and_gets_gradients(pos_embed, pool):
    model = tiny(pos_embed=pos_embed, pool=pool)
    assert isinstance(model, VisionTransformer) and model.grid == (4, 4)
    model(torch.randn(3, 1, 16, 16)).logsumexp(-1).sum().backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # sincos_1d's table is frozen
    no_grad = [n for n, p in trainable if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == []


def test_stride_and_grid_follow_the_stage_count_and_patch_size():
    assert tiny(layers=[], patch_size=1).grid == (4, 4)  # stem alone: stride 4
    assert tiny(layers=[1, 1], widths=[64, 64], img_size=32).grid == (4, 4)  # two stages: stride 8
    model = tiny(layers=[], patch_size=2, img_size=32)
    assert model.patch_embed.patch_size == (8, 8) and model.grid == (4, 4)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variant="R101+ViT-H/14"), r"unknown hybrid variant 'R101\+ViT-H/14'.*R50\+ViT-B/16.*r50_s16_224"),
        (dict(padding="valid"), "unknown padding 'valid'; choose one of same, symmetric"),
        (dict(num_groups=32), "GroupNorm with 32 groups needs a channel count divisible by it, got 16"),
        (dict(layers=[1, 1], widths=[64]), "2 stages .* only 1 stage widths"),
        (dict(layers=[1, 0], widths=[64, 64]), "every stage needs at least one block"),
        (dict(widths=[0]), r"stage widths must be positive channel counts, got \[0\]"),
        (dict(embed_dim=0), "embed_dim must be a positive integer, got 0"),
        (dict(img_size=18), "not divisible by the patch size 4x4"),
        (dict(patch_size=0), "patch_size must be at least 1, got 0"),
    ],
)
def test_bad_configuration_fails_with_a_clear_message(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        tiny(**kwargs)


def test_lit_vit_checkpoint_round_trip_and_wrong_layout_is_named(tmp_path):
    torch.manual_seed(0)
    src = randomise(tiny()).eval()
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "lit.ckpt")
    dst = tiny().eval()
    report = load_pretrained(dst, tmp_path / "lit.ckpt")
    assert (report.family, report.layout, report.skipped_head) == ("hybrid", "lit_vit", ["head.weight", "head.bias"])
    assert report.resampled is None and report.loaded == len(dst.state_dict()) - 2
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(dst.forward_features(x), src.forward_features(x))
    with pytest.raises(ConfigError, match=r"holds a custom hybrid \(layers \[1\].*build the model with that variant"):
        load_pretrained(tiny(layers=[1, 1], widths=[64, 64]), tmp_path / "lit.ckpt")
    # position parameters of any kind saved at another grid are resampled (here a relative bias, 4x4 -> 8x8 tokens)
    torch.save(tiny(pos_embed="relative").state_dict(), tmp_path / "rel16.pth")
    big = tiny(pos_embed="relative", img_size=32)
    assert load_pretrained(big, tmp_path / "rel16.pth").resampled == ((4, 4), (8, 8))
    assert big.pos_embed.relative_bias_table.shape == (15 * 15 + 3, 4)
    vit = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=4)
    torch.save(vit.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(ConfigError, match="holds a plain ViT .* not a hybrid"):
        load_pretrained(tiny(), tmp_path / "vit.pth")


def test_hybrid_trains_resumes_and_reloads_from_the_cli_with_pixel_distances_and_measured_compute(tmp_path):
    import json

    import numpy as np

    from lit_vit.ablation.results import train_flops
    from lit_vit.cli import main
    from lit_vit.modules import ImageClassifier
    from lit_vit.perf import count_flops

    init = {"img_size": 16, "in_chans": 1, "num_classes": 10, "layers": [1], "widths": [64], "stem_width": 32,
            "num_groups": 8, "embed_dim": 32, "depth": 2, "num_heads": 2}  # fmt: skip
    run = tmp_path / "run"

    def fit(*extra: str) -> None:
        main([
            "fit", "--model=lit_vit.modules.ImageClassifier",
            f"--model.backbone={json.dumps({'class_path': 'lit_vit.models.HybridViT', 'init_args': init})}",
            "--data=lit_vit.data.DigitsDataModule", "--data.batch_size=16", f"--trainer.default_root_dir={run}",
            "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2", "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
            "--trainer.log_every_n_steps=2", "--trainer.callbacks+=lit_vit.callbacks.ThroughputLogger",
            "--trainer.callbacks+=lit_vit.callbacks.ViTArtifacts", "--trainer.callbacks.num_images=8",
            "--seed_everything=0", *extra,
        ])  # fmt: skip

    fit("--trainer.max_epochs=1")
    with np.load(run / "artifacts" / "attention_distance.npz") as data:
        # a 4x4 token grid of stride 4 px: the farthest pair of tokens is 3 * 4 * sqrt(2) px apart
        assert float(data["max_distance"]) == pytest.approx(12 * 2**0.5)
        assert data["distance"].shape == (2, 2)
    # training compute = FLOPs of one image's training step on this model x the 3 * 16 images trained
    per_image = count_flops(HybridViT(**init), torch.zeros(1, 1, 16, 16), train=True)
    assert train_flops(run) == {"train_flops": float(per_image * 48)}

    fit("--trainer.max_epochs=2", "--ckpt_path=last")
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)  # written here
    assert (last["epoch"], last["global_step"]) == (2, 6)
    assert train_flops(run) == {"train_flops": float(per_image * 96)}  # the compute count survives the resume
    model = ImageClassifier.load_from_checkpoint(run / "checkpoints" / "last.ckpt", map_location="cpu").eval()
    assert isinstance(model.backbone, HybridViT)
    state = {k.removeprefix("backbone."): v for k, v in last["state_dict"].items() if k.startswith("backbone.")}
    fresh = HybridViT(**init).eval()
    fresh.load_state_dict(state)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), fresh(x))


def test_compute_plot_draws_one_point_per_variant_and_needs_measured_compute(tmp_path):
    from lit_vit.ablation.plots import plot_compute
    from lit_vit.ablation.results import read_results, write_results

    rows = [
        {"variant": v, "seed": s, "final_val_acc1": a, "train_flops": f}
        for v, f in (("vit", 2e12), ("hybrid", 2.3e12))
        for s, a in ((0, 0.9), (1, 0.95))
    ]
    write_results(tmp_path, rows)
    read = read_results(tmp_path)
    assert [r["train_flops"] for r in read] == [2e12, 2e12, 2.3e12, 2.3e12]
    assert plot_compute(tmp_path, read) == tmp_path / "compute.png" and (tmp_path / "compute.png").stat().st_size
    same = [{**r, "train_flops": 2e12} for r in read]  # every variant spent the same: no compute axis to plot
    assert plot_compute(tmp_path, same) is None
    read[0]["train_flops"] = None  # a run without ThroughputLogger: no compute, no plot
    assert plot_compute(tmp_path, read) is None


@pytest.mark.parametrize("layers, padding", [([1], "same"), ([], "symmetric")])
def test_bench_times_a_hybrid_against_timms_hybrid_with_the_same_weights(tmp_path, layers, padding):
    import json

    import yaml

    from lit_vit.bench import main as bench_main

    init = dict(img_size=32, in_chans=1, num_classes=10, layers=layers, widths=[64], stem_width=32, num_groups=8,
                padding=padding, embed_dim=32, depth=2, num_heads=2)  # fmt: skip
    config = tmp_path / "hybrid.yaml"
    config.write_text(yaml.safe_dump({"backbone": {"class_path": "lit_vit.models.HybridViT", "init_args": init}}))
    out = tmp_path / "results.jsonl"
    bench_main(["--config", str(config), "--batch-size", "2", "--warmup", "0", "--repeats", "2", "--threads", "1",
                "--output", str(out)])  # fmt: skip
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert rec["config"]["input_shape"] == [1, 32, 32] and rec["config"]["model"].startswith("HybridViT(")
    assert rec["params"]["lit_vit"] == rec["params"]["timm"] == n_params(HybridViT(**init))
    assert rec["timm_max_abs_diff"] < 1e-5
    for mode in ("train", "infer"):
        res = rec["results"][mode]
        assert res["lit_vit"]["flops_per_step"] == res["timm"]["flops_per_step"] > 0
        assert len(res["timm"]["step_time_ms_all"]) == 2
