"""The weights API: `read` (the one reader of weights and checkpoint files: every file kind, every refusal named)
and `load_pretrained` (one entry point and one LoadReport for ViT, hybrid, T2T-ViT and ViLT)."""

import argparse
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lit_vit.errors import ConfigError
from lit_vit.models import HybridViT, T2TViT, ViLT, VisionTransformer
from lit_vit.models.weights import LoadReport, load_pretrained, read
from lit_vit.run_folder import read_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


def sd() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)}


def same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> bool:
    return got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items())


# --- read ---------------------------------------------------------------------------------------------------------
def test_a_safetensors_file_gives_its_tensors_and_metadata(tmp_path):
    save_file(sd(), tmp_path / "w.safetensors", metadata={"source": "test"})
    tensors, meta = read(tmp_path / "w.safetensors")
    assert same(tensors, sd())
    assert meta == {"metadata": {"source": "test"}, "format": "safetensors", "nested": None,
                    "path": str(tmp_path / "w.safetensors")}  # fmt: skip


def test_a_torch_state_dict_gives_its_tensors_and_no_meta(tmp_path):
    torch.save(sd(), tmp_path / "w.pth")
    tensors, meta = read(tmp_path / "w.pth")
    assert same(tensors, sd())
    assert meta == {"format": "torch", "nested": None, "path": str(tmp_path / "w.pth")}


@pytest.mark.parametrize("key", ["state_dict_ema", "model_ema", "state_dict", "model", "module"])
def test_a_nested_state_dict_is_flattened_and_the_rest_is_meta(tmp_path, key):
    torch.save({key: {f"module.{k}": v for k, v in sd().items()}, "args": {"lr": 0.1}}, tmp_path / "w.pth.tar")
    tensors, meta = read(tmp_path / "w.pth.tar")
    assert same(tensors, sd())  # `module.` (DataParallel) prefixes removed
    assert meta["nested"] == key and meta["args"] == {"lr": 0.1} and meta["format"] == "torch"


def test_ema_weights_come_first_unless_not_preferred(tmp_path):
    plain = {k: v + 1 for k, v in sd().items()}
    torch.save({"state_dict": plain, "state_dict_ema": sd()}, tmp_path / "w.pth")
    tensors, meta = read(tmp_path / "w.pth")
    assert same(tensors, sd()) and same(meta["state_dict"], plain)
    tensors, meta = read(tmp_path / "w.pth", prefer=("state_dict",))
    assert same(tensors, plain) and meta["nested"] == "state_dict"


def test_a_lightning_checkpoint_gives_its_state_dict_and_its_hyperparameters_as_meta(tmp_path):
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {f"backbone.{k}": v for k, v in sd().items()},
        "hyper_parameters": {"lr": 1e-3, "backbone": {"class_path": "lit_vit.models.VisionTransformer"}},
        "loops": {"fit_loop": {}},
    }
    torch.save(ckpt, tmp_path / "last.ckpt")
    tensors, meta = read(tmp_path / "last.ckpt")
    assert same(tensors, {f"backbone.{k}": v for k, v in sd().items()})  # a LightningModule's prefix is kept
    assert (meta["format"], meta["nested"], meta["epoch"], meta["global_step"]) == ("lightning", "state_dict", 3, 120)
    assert meta["hyper_parameters"]["lr"] == 1e-3
    # the CLI's contract: the checkpoint dict, hyper-parameters included, to compare model configs
    back = read_checkpoint(tmp_path / "last.ckpt")
    assert back["hyper_parameters"] == ckpt["hyper_parameters"] and back["global_step"] == 120
    assert same(back["state_dict"], ckpt["state_dict"]) and "format" not in back


def test_a_file_with_python_objects_is_refused_without_running_code(tmp_path):
    torch.save({"state_dict": sd(), "hook": ConfigError("boom")}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match=r"evil\.pth holds Python objects .*weights_only=True") as err:
        read(tmp_path / "evil.pth")
    assert "safetensors" in str(err.value)  # the fix: re-save the state dict or convert it
    # the `args` (an argparse.Namespace) of timm's training script, in official T2T-ViT files, is let through for
    # weights; a lit_vit checkpoint given to --ckpt_path never holds one
    torch.save({"state_dict": sd(), "args": argparse.Namespace(lr=1)}, tmp_path / "args.pth")
    assert read(tmp_path / "args.pth")[1]["args"].lr == 1
    with pytest.raises(ConfigError, match=r"args\.pth holds Python objects .*weights_only=True"):
        read_checkpoint(tmp_path / "args.pth")
    with (tmp_path / "plain.pkl").open("wb") as f:
        pickle.dump({"a": torch.zeros(1)}, f)  # a plain pickle is not torch.save's format at all
    with pytest.raises(ConfigError, match=r"plain\.pkl is not a readable weights file"):
        read(tmp_path / "plain.pkl")


def test_truncated_empty_and_missing_files_are_named_with_the_fix(tmp_path):
    torch.save(sd(), tmp_path / "w.pth")
    data = (tmp_path / "w.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"cut\.pth is not a readable weights file \(truncated.*earlier copy"):
        read(tmp_path / "cut.pth")
    save_file(sd(), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 8])
    with pytest.raises(ConfigError, match=r"cut\.safetensors is not a readable weights file \(truncated"):
        read(tmp_path / "cut.safetensors")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"empty\.ckpt is empty \(0 bytes\)"):
        read(tmp_path / "empty.ckpt")
    with pytest.raises(ConfigError, match=r"weights file .*nope\.pth does not exist; give the path of a \.ckpt"):
        read(tmp_path / "nope.pth")
    # the CLI words the same refusals for --ckpt_path, with the run's other checkpoints as the fix
    with pytest.raises(ConfigError, match=r"not a readable checkpoint .*another checkpoint of the run"):
        read_checkpoint(tmp_path / "cut.pth")
    with pytest.raises(ConfigError, match=r"not a Lightning checkpoint.*--model\.init_args\.pretrained"):
        read_checkpoint(tmp_path / "w.pth")


def test_files_without_a_state_dict_are_refused(tmp_path):
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    torch.save({"epoch": 3}, tmp_path / "nothing.pth")
    torch.save({"state_dict": {"a": 1}}, tmp_path / "ints.pth")
    for name in ("list.pth", "nothing.pth", "ints.pth"):
        with pytest.raises(ConfigError, match="state dict"):
            read(tmp_path / name)


def test_read_is_the_only_reader_of_weights_files():
    package = Path(__file__).resolve().parents[1] / "lit_vit"
    allowed = {package / "models" / "weights", package / "lightning_compat.py"}
    readers = [
        f"{path.relative_to(package)}:{i}"
        for path in package.rglob("*.py")
        if not any(path == a or a in path.parents for a in allowed)
        for i, line in enumerate(path.read_text().splitlines(), 1)
        if "torch.load(" in line or "safetensors." in line or "import safetensors" in line
    ]
    assert readers == []


# --- load_pretrained ----------------------------------------------------------------------------------------------
def vit(img_size: int, **kw) -> VisionTransformer:
    return VisionTransformer(img_size=img_size, patch_size=4, embed_dim=32, depth=1, num_heads=2, num_classes=3, **kw)


def hybrid(img_size: int, **kw) -> HybridViT:
    return HybridViT(img_size=img_size, in_chans=1, num_classes=3, layers=[1], widths=[64], stem_width=32,
                     num_groups=8, embed_dim=32, depth=1, num_heads=4, **kw)  # fmt: skip


def t2t(img_size: int, **kw) -> T2TViT:
    return T2TViT(img_size=img_size, tokens_type="performer", in_chans=1, num_classes=3, embed_dim=32, depth=1,
                  num_heads=2, mlp_ratio=2.0, token_dim=16, **kw)  # fmt: skip


def vilt(img_size: int) -> ViLT:
    return ViLT(vocab_size=50, max_text_len=12, img_size=img_size, patch_size=8, embed_dim=32, depth=1, num_heads=4)


@pytest.mark.parametrize(
    "family, build, small, big, grids",
    [
        ("vit", vit, 16, 24, ((4, 4), (6, 6))),
        ("hybrid", hybrid, 16, 32, ((4, 4), (8, 8))),
        ("t2t_vit", t2t, 32, 48, ((2, 2), (3, 3))),
        ("vilt", vilt, 32, 48, ((4, 4), (6, 6))),
    ],
)
def test_every_family_loads_through_one_function_and_reports_a_resampled_grid(
    tmp_path, family, build, small, big, grids
):
    torch.manual_seed(0)
    source = build(small)
    kw = {"pos_embed": "learned_1d"} if family != "vilt" else {}
    if kw:
        source = build(small, **kw)
    torch.save({"state_dict": source.state_dict(), "epoch": 1}, tmp_path / "w.pth")
    target = build(big, **kw)
    n = len(target.state_dict())
    report = load_pretrained(target, tmp_path / "w.pth")
    assert isinstance(report, LoadReport)
    assert (report.family, report.layout, report.resampled, report.unexpected) == (family, "lit_vit", grids, [])
    assert report.source == str(tmp_path / "w.pth")
    heads = [k for k in source.state_dict() if k.startswith("head.")] if family != "vilt" else []
    assert report.skipped_head == heads  # the classifiers' head stays new; ViLT's heads load
    assert report.loaded == n - len(heads) and report.missing == []
    assert f"resampled {grids[0][0]}x{grids[0][1]} -> {grids[1][0]}x{grids[1][1]}" in report.summary()
    same_size = load_pretrained(build(small, **kw), source.state_dict(), load_head=True, source="mine.pth")
    assert same_size.resampled is None and same_size.skipped_head == [] and same_size.loaded == n
    assert same_size.source == "mine.pth" and "every tensor of the checkpoint was loaded" in same_size.summary()


def test_a_model_lit_vit_does_not_know_is_refused_with_the_families_it_knows():
    with pytest.raises(ConfigError, match="cannot load pretrained weights into a Linear: .*VisionTransformer"):
        load_pretrained(torch.nn.Linear(2, 2), {"weight": torch.zeros(2, 2)})


def test_models_have_no_weights_route_of_their_own():
    for cls in (VisionTransformer, HybridViT, T2TViT, ViLT):
        assert not hasattr(cls, "load_pretrained"), cls
    import inspect

    assert "checkpoint" not in inspect.signature(T2TViT).parameters
