"""Shared optimisation (lit_vit.modules.optim): every module's parameter groups, optimiser and schedule are the ones
the modules built on their own before the code was shared (REFERENCE: frozen from that code, commit 22c10ac)."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lit_vit.errors import ConfigError
from lit_vit.models.hybrid import HybridViT
from lit_vit.models.t2t_vit import T2TViT
from lit_vit.models.vilt import ViLT
from lit_vit.models.vit import VisionTransformer
from lit_vit.modules import ImageClassifier, ViltPretraining, ViltRetrieval, ViltVQA
from lit_vit.modules.optim import layer_ids, param_groups

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def tiny_vilt(**kwargs) -> ViLT:
    return ViLT(
        vocab_size=50, max_text_len=8, img_size=32, patch_size=16, embed_dim=32, depth=2, num_heads=2,
        max_image_len=4, **kwargs,
    )  # fmt: skip


CASES = {
    "vit": lambda: ImageClassifier(
        VisionTransformer(**TINY), num_classes=5, lr=1e-3, layer_decay=0.5, head_lr=0.01, warmup_epochs=1
    ),
    "vit_pos": lambda: ImageClassifier(
        VisionTransformer(**TINY, pos_embed="relative"), num_classes=5, lr=1e-3, pos_embed_lr=2e-3
    ),
    "vit_plain": lambda: ImageClassifier(
        VisionTransformer(**TINY, pool="gap", class_token=False), num_classes=5, lr=1e-3, optimizer="sgd"
    ),
    "t2t": lambda: ImageClassifier(
        T2TViT(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5, tokens_type="performer"),
        num_classes=5,
        lr=1e-3,
        layer_decay=0.75,
    ),
    "hybrid": lambda: ImageClassifier(
        HybridViT(
            img_size=32,
            layers=[1],
            widths=[16],
            stem_width=8,
            num_groups=4,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=5,
        ),  # fmt: skip
        num_classes=5,
        lr=1e-3,
        layer_decay=0.5,
        head_lr=0.01,
        pos_embed_lr=0.0,
    ),
    "vilt_pretrain": lambda: ViltPretraining(tiny_vilt(), lr=1e-4, weight_decay=0.01),
    "vilt_vqa": lambda: ViltVQA(tiny_vilt(num_answers=3), lr=1e-4, weight_decay=0.01, head_lr_mult=10.0),
    "vilt_retrieval": lambda: ViltRetrieval(tiny_vilt(rank_head=True), lr=1e-4, weight_decay=0.01),
}


@pytest.mark.parametrize("case", list(CASES))
def test_groups_optimiser_and_schedule_are_the_ones_each_module_built_before(case):
    torch.manual_seed(0)
    module = CASES[case]()
    module.trainer = SimpleNamespace(estimated_stepping_batches=100, max_epochs=10)
    conf = module.configure_optimizers()
    optimizer, scheduler = conf["optimizer"], conf["lr_scheduler"]["scheduler"]
    names = {id(p): n for n, p in module.named_parameters()}
    groups = [(g["initial_lr"], g["weight_decay"], [names[id(p)] for p in g["params"]]) for g in optimizer.param_groups]
    ref = REFERENCE[case]
    assert groups == ref["groups"]  # membership, order, peak lr and weight decay of every group
    assert type(optimizer).__name__ == ref["optimizer"] and conf["lr_scheduler"]["interval"] == "step"
    defaults = {
        k: list(v) if isinstance(v, tuple) else v for k, v in optimizer.defaults.items() if k in ref["defaults"]
    }
    assert defaults == ref["defaults"]
    assert [scheduler.lr_lambdas[0](s) for s in (0, 9, 10, 50, 99, 100)] == pytest.approx(ref["schedule"])


@pytest.mark.parametrize(
    "model, stem",
    [
        (VisionTransformer(**TINY), {"cls_token", "patch_embed.proj.weight", "patch_embed.proj.bias"}),
        (T2TViT(img_size=32, embed_dim=32, depth=2, num_heads=2, num_classes=5), None),
        (tiny_vilt(), None),
    ],
)
def test_layer_groups_number_the_stem_0_block_i_i_plus_1_and_the_read_out_last(model, stem):
    ids = model.layer_groups()
    assert set(ids) == {n for n, _ in model.named_parameters()}
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.mlp.fc2.bias"] == 2
    assert ids["norm.weight"] == 3 and ids["cls_token"] == 0
    if stem is not None:
        assert {n for n, i in ids.items() if i == 0} == stem | {n for n in ids if n.startswith("pos_embed.")}


def test_a_backbone_without_layer_groups_is_refused_for_layer_decay_naming_it():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match="Sequential has none.*layer_decay"):
        layer_ids(model)


def test_module_lrs_take_precedence_over_layer_decay_and_equal_lrs_keep_their_own_group():
    model = VisionTransformer(**TINY)
    groups = param_groups(model, 1.0, 0.1, layer_decay=0.5, module_lrs=[("head", 1.0)])
    head = {id(p) for p in model.head.parameters()}
    (head_group,) = [g for g in groups if {id(p) for p in g["params"]} == {id(model.head.weight)}]
    assert head_group["lr"] == 1.0 and head_group["weight_decay"] == 0.1
    main = [g for g in groups if "lr" not in g]  # the final norm: layer depth + 1, decayed lr == lr
    assert {id(p) for g in main for p in g["params"]} == {id(model.norm.weight), id(model.norm.bias)}
    assert head <= {id(p) for g in groups for p in g["params"]}


# Frozen from the modules' own configure_optimizers before modules/optim.py (commit 22c10ac): data, in JSON
REFERENCE = {
    case: {**ref, "groups": [tuple(g) for g in ref["groups"]]}
    for case, ref in json.loads((Path(__file__).parent / "data" / "optim_reference.json").read_text()).items()
}


def test_layer_decay_and_weight_decay_of_vit_parameters_equal_timms_but_the_final_norm_is_the_read_outs():
    import timm
    from timm.optim import param_groups_layer_decay

    kw = dict(img_size=32, patch_size=8, num_classes=7, embed_dim=32, depth=3, num_heads=4)
    ref = timm.models.vision_transformer.VisionTransformer(**kw)
    theirs = {}
    names = {id(p): n for n, p in ref.named_parameters()}
    for g in param_groups_layer_decay(
        ref, weight_decay=0.05, no_weight_decay_list=ref.no_weight_decay(), layer_decay=0.5
    ):
        theirs.update({names[id(p)]: (g["lr_scale"], g["weight_decay"]) for p in g["params"]})
    ours = VisionTransformer(**kw)
    names = {id(p): n.replace("pos_embed.pos_embed", "pos_embed") for n, p in ours.named_parameters()}  # timm's name
    mine = {}
    for g in param_groups(ours, 1.0, 0.05, layer_decay=0.5):
        mine.update({names[id(p)]: (g.get("lr", 1.0), g["weight_decay"]) for p in g["params"]})
    assert len(mine) == len(theirs) == len(list(ours.parameters()))
    # the one difference: the final norm is the read-out's layer (depth + 1) as in BEiT / MAE's lr_decay.py; timm's
    # group_matcher puts it with the last block
    norm = {"norm.weight", "norm.bias"}
    assert {n: v for n, v in mine.items() if n not in norm} == {n: v for n, v in theirs.items() if n not in norm}
    assert {mine[n][0] for n in norm} == {1.0} and {theirs[n][0] for n in norm} == {0.5}
