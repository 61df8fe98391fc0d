"""Position embeddings and pooling of the ViT: every kind trains and resizes; the 2-D and relative kinds are what the
paper describes; bad names fail early."""

import re

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lit_vit.data import DigitsDataModule
from lit_vit.errors import ConfigError
from lit_vit.models import VisionTransformer
from lit_vit.models.layers import POS_EMBED_KINDS, build_pos_embed
from lit_vit.models.layers.attention import Attention
from lit_vit.models.layers.pos_embed import sincos_2d_table
from lit_vit.modules import ImageClassifier

POOLS = [("cls", True), ("gap", True), ("gap", False), ("map", True)]


def tiny_vit(pos_embed: str = "learned_1d", pool: str = "cls", class_token: bool = True, img_size=(8, 12), **kw):
    args = dict(img_size=img_size, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=2, num_heads=2)
    return VisionTransformer(pos_embed=pos_embed, pool=pool, class_token=class_token, **{**args, **kw})


@pytest.mark.parametrize("pool,class_token", POOLS)
@pytest.mark.parametrize("kind", POS_EMBED_KINDS)
def test_every_kind_and_pool_trains_a_step_and_resizes_to_a_non_square_grid(kind, pool, class_token):
    torch.manual_seed(0)
    model = tiny_vit(kind, pool, class_token)  # 2 x 3 grid
    x, y = torch.randn(4, 1, 8, 12), torch.tensor([0, 1, 2, 0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "head.weight" in changed and "blocks.0.attn.qkv.weight" in changed
    pos_params = {n for n, p in model.named_parameters() if n.startswith("pos_embed.") and p.requires_grad}
    assert pos_params <= changed  # the learned tables get gradients; fixed tables (sincos_*) have none
    assert bool(pos_params) == (kind in ("learned_1d", "learned_2d", "relative"))

    model.eval()
    big = torch.randn(2, 1, 12, 20)  # 3 x 5 grid
    on_the_fly = model(big)
    model.resize_pos_embed((12, 20))
    assert model.grid == (3, 5) and model.pos_embed.grid == (3, 5)
    resized = model(big)
    assert resized.shape == (2, 3)
    # a permanent resize gives the same model as resampling on the fly
    torch.testing.assert_close(resized, on_the_fly)
    if kind == "learned_1d":
        assert model.pos_embed.pos_embed.shape == (1, int(class_token) + 15, 16)
    if kind == "relative":
        assert model.pos_embed.relative_bias_table.shape == (5 * 9 + 3 * int(class_token), 2)


def test_learned_2d_is_the_concatenation_of_separate_x_and_y_tables():
    pe = build_pos_embed("learned_2d", dim=8, grid=(2, 3), num_prefix=1, num_heads=1)
    assert pe.pos_embed_x.shape == (3, 4) and pe.pos_embed_y.shape == (2, 4)  # D/2 each, one row per column / row
    with torch.no_grad():
        pe.pos_embed_x.copy_(torch.arange(12.0).reshape(3, 4))
        pe.pos_embed_y.copy_(-torch.arange(8.0).reshape(2, 4) - 1)
    table = pe.table((2, 3))
    assert table.shape == (1, 1 + 6, 8)
    torch.testing.assert_close(table[0, 0], pe.pos_embed_prefix[0, 0])
    for row in range(2):
        for col in range(3):
            expected = torch.cat([pe.pos_embed_x[col], pe.pos_embed_y[row]])
            torch.testing.assert_close(table[0, 1 + row * 3 + col], expected)
    # the parameter count is (H + W) * D/2 + prefix, not H * W * D
    assert sum(p.numel() for p in pe.parameters()) == (2 + 3) * 4 + 8


def test_sincos_2d_is_fixed_and_follows_the_moco_v3_formula():
    pe = build_pos_embed("sincos_2d", dim=8, grid=(2, 3), num_prefix=1, num_heads=1)
    assert list(pe.parameters()) == []
    table = sincos_2d_table((2, 3), 8)
    omega = 1.0 / 10000.0 ** torch.tensor([0.0, 1.0])  # quarter = 2: exponents 0/1 and 1/1
    row, col = 1, 2
    expected = torch.cat([(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()])
    torch.testing.assert_close(table[row * 3 + col], expected)
    x = torch.zeros(1, 7, 8)
    out = pe(x, (2, 3))
    assert torch.equal(out[:, 0], x[:, 0])  # the class token gets no position
    torch.testing.assert_close(out[0, 1:], table)


def test_relative_bias_changes_the_attention_output_and_keeps_the_fused_kernel(monkeypatch):
    torch.manual_seed(0)
    model = tiny_vit("relative").eval()
    x = torch.randn(2, 1, 8, 12)
    calls = []
    sdpa = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append(attn_mask)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        out = model(x)
        assert len(calls) == 2 and all(m is not None and m.shape == (1, 2, 7, 7) for m in calls)
        model.pos_embed.relative_bias_table.add_(torch.randn_like(model.pos_embed.relative_bias_table))
        changed = model(x)
    assert not torch.allclose(out, changed, atol=1e-4)


def test_relative_bias_depends_only_on_the_2d_offset_and_has_class_token_entries():
    pe = build_pos_embed("relative", dim=8, grid=(3, 4), num_prefix=1, num_heads=2)
    assert pe.relative_bias_table.shape == (5 * 7 + 3, 2)
    with torch.no_grad():
        pe.relative_bias_table.copy_(torch.randn_like(pe.relative_bias_table))
    bias = pe.attn_bias((3, 4))[0]  # heads, 13, 13
    assert bias.shape == (2, 13, 13)

    def idx(r, c):
        return 1 + r * 4 + c

    # same offset (+1 row, +2 cols) at two places -> same bias; a different offset -> different bias
    torch.testing.assert_close(bias[:, idx(0, 0), idx(1, 2)], bias[:, idx(1, 1), idx(2, 3)])
    assert not torch.allclose(bias[:, idx(0, 0), idx(1, 2)], bias[:, idx(0, 0), idx(2, 1)])
    extra = pe.relative_bias_table[-3:]
    torch.testing.assert_close(bias[:, 0, 5], extra[0])  # class -> patch
    torch.testing.assert_close(bias[:, 5, 0], extra[1])  # patch -> class
    torch.testing.assert_close(bias[:, 0, 0], extra[2])  # class -> class


def test_attention_probs_are_the_weights_the_fused_forward_uses():
    torch.manual_seed(0)
    attn = Attention(dim=16, num_heads=2).eval()
    x, bias = torch.randn(2, 5, 16), torch.randn(1, 2, 5, 5)
    probs = attn.attention_probs(x, bias)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 5))
    v = attn.qkv(x).reshape(2, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)[2]
    manual = attn.proj((probs @ v).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(attn(x, bias), manual, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["learned_1d", "relative"])
def test_attention_maps_cover_every_block_without_changing_the_output(kind):
    torch.manual_seed(0)
    model = tiny_vit(kind).eval()
    x = torch.randn(3, 1, 8, 12)
    with torch.no_grad():
        out = model(x)
        maps = model.attention_maps(x)
        assert torch.equal(model(x), out)
    assert len(maps) == 2 and all(m.shape == (3, 2, 7, 7) for m in maps)
    torch.testing.assert_close(maps[1].sum(-1), torch.ones(3, 2, 7))


def test_sincos_2d_with_width_not_divisible_by_4_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"sincos_2d.*divisible by 4, got 18.*use a width such as 16"):
        tiny_vit("sincos_2d", embed_dim=18)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (
            dict(pos_embed="learned"),
            re.escape(f"unknown pos_embed 'learned'; choose one of {', '.join(POS_EMBED_KINDS)}"),
        ),
        (dict(pool="avg"), r"unknown pool 'avg'; choose one of cls, gap, map"),
        (dict(pool="cls", class_token=False), r"pool 'cls' needs the class token.*set class_token: true or pool: gap"),
    ],
)
def test_unknown_names_and_cls_without_class_token_are_clear_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        tiny_vit(**kwargs)


@pytest.mark.parametrize("head_lr", [None, 1e-2])
@pytest.mark.parametrize("kind", ["learned_2d", "relative"])
def test_pos_embed_lr_trains_the_position_parameters_at_their_own_rate(kind, head_lr):
    """With lr 0, only the position parameters (and the head, given head_lr) move; their groups carry the own lr."""
    torch.manual_seed(0)
    backbone = VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=10, embed_dim=16, depth=2, num_heads=2, pos_embed=kind
    )
    before = {n: p.detach().clone() for n, p in backbone.named_parameters()}
    model = ImageClassifier(backbone, lr=0.0, pos_embed_lr=1e-2, head_lr=head_lr, weight_decay=0.05)
    trainer = L.Trainer(
        max_steps=2, limit_val_batches=0, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, DigitsDataModule(batch_size=8))
    changed = {n for n, p in backbone.named_parameters() if not torch.equal(p, before[n])}
    pos = {n for n, _ in backbone.named_parameters() if n.startswith("pos_embed.")}
    assert pos and changed == pos | ({"head.weight", "head.bias"} if head_lr else set())
    groups = trainer.optimizers[0].param_groups
    by_param = {id(p): g for g in groups for p in g["params"]}
    for p in backbone.pos_embed.parameters():
        assert by_param[id(p)]["initial_lr"] == 1e-2 and by_param[id(p)]["weight_decay"] == 0.0
    assert by_param[id(backbone.blocks[0].attn.qkv.weight)]["initial_lr"] == 0.0
    assert by_param[id(backbone.blocks[0].attn.qkv.weight)]["weight_decay"] == 0.05
    assert sum(len(g["params"]) for g in groups) == sum(1 for p in backbone.parameters() if p.requires_grad)


def test_pos_embed_lr_needs_a_backbone_with_position_embeddings():
    class Bare(torch.nn.Module):
        def reset_classifier(self, num_classes: int) -> None: ...

    with pytest.raises(ConfigError, match="pos_embed_lr needs a backbone with a `pos_embed` module; Bare has none"):
        ImageClassifier(Bare(), pos_embed_lr=1e-2)


@pytest.mark.parametrize("name", ["lr", "head_lr", "pos_embed_lr"])
def test_a_negative_learning_rate_is_a_clear_error(name):
    message = rf"{name} must be a learning rate >= 0, got -0.01; e.g. --model.init_args.{name}=1e-3"
    with pytest.raises(ConfigError, match=message):
        ImageClassifier(tiny_vit(), **{name: -0.01})


# --- rope_2d: the kind added through the registry alone ------------------------------------------------------------
def rope_logits(grid=(4, 5), head_dim=8, num_prefix=1, seed=0):
    """Attention logits of one head whose queries and keys are the same vectors at every position, after rope_2d."""
    pe = build_pos_embed("rope_2d", dim=head_dim * 2, grid=grid, num_prefix=num_prefix, num_heads=2)
    g = torch.Generator().manual_seed(seed)
    n = num_prefix + grid[0] * grid[1]
    q = torch.randn(1, 1, 1, head_dim, generator=g).expand(1, 1, n, head_dim)
    k = torch.randn(1, 1, 1, head_dim, generator=g).expand(1, 1, n, head_dim)
    q2, k2 = pe.qk_hook(grid)(q, k)
    return q, k, q2, k2, (q2 @ k2.transpose(-2, -1))[0, 0]


def test_rope_2d_logits_depend_only_on_the_2d_offset_and_spare_the_class_token():
    grid = (4, 5)
    q, k, q2, k2, logits = rope_logits(grid)
    assert torch.equal(q2[..., 0, :], q[..., 0, :]) and torch.equal(k2[..., 0, :], k[..., 0, :])  # class token
    torch.testing.assert_close(q2.norm(dim=-1), q.norm(dim=-1))  # a rotation
    patch = logits[1:, 1:].reshape(*grid, *grid)  # [row_q, col_q, row_k, col_k]
    # every (query, key) pair moved by the same (dy, dx) keeps its logit ...
    torch.testing.assert_close(patch[:-1, :-1, :-1, :-1], patch[1:, 1:, 1:, 1:])
    torch.testing.assert_close(patch[:, :-2, :, :-2], patch[:, 2:, :, 2:])
    # ... while different offsets give different logits: rows and columns are told apart
    assert not torch.allclose(patch[0, 0, 0, 1], patch[0, 0, 1, 0])
    assert not torch.allclose(patch[0, 0, 0, 1], patch[0, 0, 0, 2])


def test_rope_2d_makes_the_model_see_patch_order_and_stores_nothing():
    torch.manual_seed(0)
    rope, none = tiny_vit("rope_2d").eval(), tiny_vit("none").eval()
    assert not [k for k in rope.state_dict() if k.startswith("pos_embed.")]  # frequencies are a non-saved buffer
    x = torch.randn(2, 1, 8, 12)
    swapped = torch.cat([x[..., 4:8], x[..., 0:4], x[..., 8:]], dim=-1)  # swap the first two patch columns
    with torch.no_grad():
        torch.testing.assert_close(none(swapped), none(x))  # no position information: order-blind
        assert not torch.allclose(rope(swapped), rope(x), atol=1e-5)
    # attention maps (the plots) apply the same rotation as the fused forward
    with torch.no_grad():
        maps = rope.attention_maps(x)
        block = rope.blocks[0]
        tokens, grid = rope.embed(x)
        q, k, _ = block.attn._qkv(block.norm1(tokens), rope.pos_embed.qk_hook(grid))
        ref = ((q @ k.transpose(-2, -1)) * block.attn.scale).softmax(-1)
    torch.testing.assert_close(maps[0], ref)


def test_rope_2d_needs_a_head_width_divisible_by_4():
    with pytest.raises(ConfigError, match=r"rope_2d.*embed_dim / num_heads = 24 / 4.*divisible by 4, got 6"):
        tiny_vit("rope_2d", embed_dim=24, num_heads=4)


def test_the_registry_is_the_one_list_of_kinds():
    from lit_vit.models.layers.pos_embed import PosEmbed

    assert POS_EMBED_KINDS[-1] == "rope_2d" and len(set(POS_EMBED_KINDS)) == len(POS_EMBED_KINDS)
    for kind in POS_EMBED_KINDS:
        pe = build_pos_embed(kind, dim=16, grid=(2, 3), num_prefix=1, num_heads=2)
        assert isinstance(pe, PosEmbed) and pe.kind == kind
    # every kind answers the whole contract: None where it does not apply
    pe = build_pos_embed("none", dim=16, grid=(2, 3), num_prefix=1, num_heads=2)
    assert pe.table((2, 3)) is None and pe.offset_table((2, 3)) is None and pe.qk_hook((2, 3)) is None
    assert build_pos_embed("relative", 16, (2, 3), 1, 2).offset_table((2, 3)).shape == (2, 3, 5)
    assert build_pos_embed("learned_1d", 16, (2, 3), 1, 2).table((2, 3)).shape == (1, 7, 16)
