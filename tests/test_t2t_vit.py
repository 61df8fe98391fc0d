"""T2T-ViT: variants, shapes, position embeddings, mixed precision, official checkpoints (numerics), CLI."""

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from conftest import tiny_fit_args
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lit_vit.cli import main
from lit_vit.errors import ConfigError
from lit_vit.models import T2T_VARIANTS, T2TViT
from lit_vit.models.layers import POS_EMBED_KINDS
from lit_vit.models.t2t_vit import TokenPerformer
from lit_vit.models.weights import load_pretrained, read
from lit_vit.modules import ImageClassifier
from lit_vit.modules.optim import param_groups

# Parameter counts of the official code (github.com/yitu-opensource/T2T-ViT, models/t2t_vit.py; the paper, Yuan et al.,
# Tokens-to-Token ViT, ICCV 2021, Table 2, rounds them) at 224 px, 1000 classes, frozen tensors (the sinusoid table,
# the performer's random features) included; the second number counts trainable parameters only, where checked.
OFFICIAL_PARAMS = {
    "T2T-ViT-7": (4_310_222, 4_255_694),
    "T2T-ViT-10": (5_889_230, None),
    "T2T-ViT-12": (6_941_902, None),
    "T2T-ViT-14": (21_545_550, 21_465_806),
    "T2T-ViT-19": (39_177_422, None),
    "T2T-ViT-24": (64_105_934, None),
    "T2T-ViT_t-14": (21_541_070, 21_465_422),
    "T2T-ViT_t-19": (39_172_942, None),
    "T2T-ViT_t-24": (64_101_454, None),
}
TINY = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0, token_dim=16)


def tiny_t2t(tokens_type: str = "performer", img_size=32, in_chans: int = 3, **kwargs) -> T2TViT:
    return T2TViT(img_size=img_size, tokens_type=tokens_type, in_chans=in_chans, num_classes=5, **{**TINY, **kwargs})


# --------------------------------------------------------------------------------------------------------------------
# A re-creation of the official module layout, written from the official code (yitu-opensource/T2T-ViT: models/
# t2t_vit.py, token_transformer.py, token_performer.py; key names, shapes, the input-dim attention scale, the skip
# through v, the performer's random features, the numpy sinusoid table, the bicubic position-table resize). It
# computes attention explicitly and the performer with einsums, as the official code.
# --------------------------------------------------------------------------------------------------------------------
def official_sinusoid(n_position: int, d_hid: int) -> torch.Tensor:
    angles = np.array([[p / np.power(10000, 2 * (j // 2) / d_hid) for j in range(d_hid)] for p in range(n_position)])
    angles[:, 0::2] = np.sin(angles[:, 0::2])
    angles[:, 1::2] = np.cos(angles[:, 1::2])
    return torch.FloatTensor(angles).unsqueeze(0)


def official_resize_pos_embed(posemb: torch.Tensor, posemb_new: torch.Tensor) -> torch.Tensor:
    tok, grid = posemb[:, :1], posemb[0, 1:]
    gs_old, gs_new = int(math.sqrt(len(grid))), int(math.sqrt(posemb_new.shape[1] - 1))
    grid = grid.reshape(1, gs_old, gs_old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(gs_new, gs_new), mode="bicubic")
    return torch.cat([tok, grid.permute(0, 2, 3, 1).reshape(1, gs_new * gs_new, -1)], dim=1)


class RefMlp(nn.Module):
    def __init__(self, dim, hidden, out=None):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, out or dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class RefTokenAttention(nn.Module):
    def __init__(self, dim, in_dim):
        super().__init__()
        self.in_dim, self.scale = in_dim, dim**-0.5  # num_heads 1: head_dim is the input dim
        self.qkv = nn.Linear(dim, in_dim * 3, bias=False)
        self.proj = nn.Linear(in_dim, in_dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 1, self.in_dim).permute(2, 0, 3, 1, 4)
        attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        x = self.proj((attn @ v).transpose(1, 2).reshape(B, N, self.in_dim))
        return v.squeeze(1) + x


class RefTokenTransformer(nn.Module):
    def __init__(self, dim, in_dim):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), RefTokenAttention(dim, in_dim)
        self.norm2, self.mlp = nn.LayerNorm(in_dim), RefMlp(in_dim, in_dim, in_dim)

    def forward(self, x):
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefTokenPerformer(nn.Module):
    def __init__(self, dim, in_dim, kernel_ratio=0.5):
        super().__init__()
        self.emb = in_dim
        self.kqv, self.proj = nn.Linear(dim, 3 * self.emb), nn.Linear(self.emb, self.emb)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(self.emb)
        self.mlp = nn.Sequential(nn.Linear(self.emb, self.emb), nn.GELU(), nn.Linear(self.emb, self.emb), nn.Dropout())
        self.m = int(self.emb * kernel_ratio)
        self.w = nn.Parameter(
            nn.init.orthogonal_(torch.randn(self.m, self.emb)) * math.sqrt(self.m), requires_grad=False
        )

    def prm_exp(self, x):
        xd = (x * x).sum(dim=-1, keepdim=True).repeat(1, 1, self.m) / 2
        wtx = torch.einsum("bti,mi->btm", x.float(), self.w)
        return torch.exp(wtx - xd) / math.sqrt(self.m)

    def forward(self, x):
        x = self.norm1(x)
        k, q, v = torch.split(self.kqv(x), self.emb, dim=-1)
        kp, qp = self.prm_exp(k), self.prm_exp(q)
        D = torch.einsum("bti,bi->bt", qp, kp.sum(dim=1)).unsqueeze(dim=2)
        kptv = torch.einsum("bin,bim->bnm", v.float(), kp)
        y = torch.einsum("bti,bni->btn", qp, kptv) / (D.repeat(1, 1, self.emb) + 1e-8)
        x = v + self.proj(y)
        return x + self.mlp(self.norm2(x))


class RefT2TModule(nn.Module):
    def __init__(self, tokens_type, in_chans, embed_dim, token_dim=64):
        super().__init__()
        layer = RefTokenTransformer if tokens_type == "transformer" else RefTokenPerformer
        self.soft_split0 = nn.Unfold(kernel_size=(7, 7), stride=(4, 4), padding=(2, 2))
        self.soft_split1 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        self.soft_split2 = nn.Unfold(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
        self.attention1 = layer(in_chans * 7 * 7, token_dim)
        self.attention2 = layer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def forward(self, x):
        x = self.attention1(self.soft_split0(x).transpose(1, 2))
        B, HW, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, int(np.sqrt(HW)), int(np.sqrt(HW)))
        x = self.attention2(self.soft_split1(x).transpose(1, 2))
        B, HW, C = x.shape
        x = x.transpose(1, 2).reshape(B, C, int(np.sqrt(HW)), int(np.sqrt(HW)))
        return self.project(self.soft_split2(x).transpose(1, 2))


class RefAttention(nn.Module):
    def __init__(self, dim, num_heads, qk_scale=None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, dim * 3, bias=False), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class RefBlock(nn.Module):
    def __init__(self, dim, num_heads, mlp_ratio, qk_scale):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), RefAttention(dim, num_heads, qk_scale)
        self.norm2, self.mlp = nn.LayerNorm(dim), RefMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class RefT2TViT(nn.Module):
    def __init__(self, img_size, tokens_type, embed_dim, depth, num_heads, mlp_ratio, qk_scale, num_classes=5):
        super().__init__()
        self.tokens_to_token = RefT2TModule(tokens_type, 3, embed_dim)
        num_patches = (img_size // 16) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(official_sinusoid(num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(RefBlock(embed_dim, num_heads, mlp_ratio, qk_scale) for _ in range(depth))
        self.norm, self.head = nn.LayerNorm(embed_dim), nn.Linear(embed_dim, num_classes)

    def forward(self, x):
        x = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x)[:, 0])


REF = dict(embed_dim=64, depth=2, num_heads=2, mlp_ratio=2.0)


def official_model(img_size: int, tokens_type: str, seed: int) -> RefT2TViT:
    """A reference model built as the official main.py does (pretrained=False, no qk_scale: head_dim ** -0.5), with
    every trainable tensor randomised (norm weights, biases, class token included) so no key can load unnoticed."""
    torch.manual_seed(seed)
    model = RefT2TViT(img_size, tokens_type, qk_scale=None, **REF)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn_like(p) * (0.1 if p.ndim > 1 else 0.5) + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def save_official(path, state_dict, ema=None) -> None:
    """As timm's CheckpointSaver in the official training script: nested state dicts plus the argparse args."""
    torch.save(
        {
            "epoch": 309,
            "arch": "t2t_vit_14",
            "state_dict": {f"module.{k}": v for k, v in state_dict.items()},
            "state_dict_ema": ema if ema is not None else state_dict,
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0, 1]}]},
            "version": 2,
            "args": argparse.Namespace(model="t2t_vit_14", lr=5e-4, img_size=224),
            "metric": 81.5,
        },
        path,
    )


def ours_like(img_size, tokens_type, **kwargs) -> T2TViT:
    return T2TViT(img_size=img_size, tokens_type=tokens_type, num_classes=5, **REF, **kwargs).eval()


# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(OFFICIAL_PARAMS))
def test_variant_parameter_counts_equal_the_official_code(variant):
    with torch.device("meta"):
        model = T2TViT(variant=variant)
    total, trainable = OFFICIAL_PARAMS[variant]
    assert sum(p.numel() for p in model.parameters()) == total
    if trainable is not None:
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    assert model.tokens_type == T2T_VARIANTS[variant]["tokens_type"]


# The paper's Table 2 GMACs: mm / addmm / bmm / attention MACs (FlopCounterMode flops / 2) of one 224-px image.
@pytest.mark.parametrize("variant, gmacs", [("T2T-ViT-7", 1.1), ("T2T-ViT-14", 4.8), ("T2T-ViT_t-14", 6.1)])
def test_macs_match_the_paper(variant, gmacs):
    with torch.device("meta"):
        model = T2TViT(variant=variant).eval()
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, 224, 224))
    assert round(counter.get_total_flops() / 2e9, 1) == gmacs


def test_official_factory_names_select_the_same_variant():
    with torch.device("meta"):
        model = T2TViT(variant="t2t_vit_t_19")
    assert (model.tokens_type, model.embed_dim, len(model.blocks)) == ("transformer", 448, 19)
    assert model.blocks[0].attn.qkv.bias is None  # deep-narrow blocks without qkv bias


def test_t2t_vit_14_forward_at_224_gives_1000_logits():
    with torch.device("meta"):  # shapes only (the numerics at 224 are compared with the official code below)
        model = T2TViT(variant="T2T-ViT-14").eval()
    with torch.no_grad(), torch.device("meta"):
        tokens, grid = model.tokens_to_token(torch.randn(1, 3, 224, 224))
        out = model.forward_head(model.norm(tokens))  # shape path of the full model at 224 without the 14 blocks
        logits = model(torch.randn(1, 3, 224, 224))
    assert tokens.shape == (1, 196, 384) and grid == (14, 14) and out.shape == logits.shape == (1, 1000)


@pytest.mark.parametrize(
    "tokens_type, size, grid",
    [("transformer", 224, (14, 14)), ("performer", 384, (24, 24)), ("transformer", (32, 48), (2, 3))],
)
def test_output_shapes_square_and_non_square(tokens_type, size, grid):
    model = tiny_t2t(tokens_type, img_size=size).eval()
    h, w = (size, size) if isinstance(size, int) else size
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, h, w))
        logits = model(torch.randn(1, 3, h, w))
    assert model.grid == grid
    assert feats.shape == (1, 1 + grid[0] * grid[1], 32) and logits.shape == (1, 5)


@pytest.mark.parametrize("bad", [20, (32, 40), 0])
def test_sides_not_multiples_of_16_are_refused(bad):
    with pytest.raises(ConfigError, match="multiples of 16"):
        tiny_t2t(img_size=bad)
    model = tiny_t2t()
    with pytest.raises(ConfigError, match=r"got 32x40.*e\.g\. 32x48"):
        model(torch.randn(1, 3, 32, 40))


def test_unknown_variant_and_token_type_are_refused():
    with pytest.raises(ConfigError, match=r"unknown T2T-ViT variant 'T2T-ViT-15'.*T2T-ViT-14"):
        T2TViT(variant="T2T-ViT-15")
    with pytest.raises(ConfigError, match=r"unknown tokens_type 'linformer'.*performer, transformer"):
        tiny_t2t("linformer")


def test_default_position_table_is_the_official_frozen_sinusoid():
    model = tiny_t2t(img_size=(32, 48))
    table = model.pos_embed.pos_embed
    assert not table.requires_grad and table.shape == (1, 7, 32)
    assert torch.equal(table, official_sinusoid(7, 32))
    assert "pos_embed.pos_embed" in dict(model.named_parameters())  # counted as the official code counts it


@pytest.mark.parametrize("kind", POS_EMBED_KINDS)
def test_every_position_embedding_kind_runs_and_resizes(kind):
    torch.manual_seed(0)
    model = tiny_t2t("transformer", img_size=(32, 48), pos_embed=kind).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        before = model(x)
        model.resize_pos_embed((48, 32))
        after = model(torch.randn(2, 3, 48, 32))
    assert model.grid == (3, 2) and before.shape == after.shape == (2, 5)
    assert torch.isfinite(after).all()


@pytest.mark.parametrize("tokens_type", ["performer", "transformer"])
def test_gradients_reach_every_trainable_parameter_and_no_frozen_one(tokens_type):
    torch.manual_seed(0)
    model = tiny_t2t(tokens_type, drop_path_rate=0.1)
    F.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    expected = {"pos_embed.pos_embed"} | (
        {"tokens_to_token.attention1.w", "tokens_to_token.attention2.w"} if tokens_type == "performer" else set()
    )
    assert frozen == expected
    optimised = {id(p) for g in param_groups(model, 1e-3, 0.05) for p in g["params"]}
    assert not any(id(p) in optimised for n, p in model.named_parameters() if n in frozen)


def test_performer_kernel_stays_float32_under_autocast():
    """Keys and queries equal to a random-feature row w0 (|w0|^2 = m = 32) give phi = exp(16) / sqrt(32) ~ 1.6e6 and a
    normaliser of T * phi^2: far beyond fp16 (65504), where the official kernel returns NaN; ours stays finite."""
    torch.manual_seed(0)
    layer = TokenPerformer(dim=147, token_dim=64).eval()
    w0 = layer.w[0].detach()
    with torch.no_grad():
        layer.kqv.weight.zero_()
        layer.kqv.bias.copy_(torch.cat([w0, w0, torch.randn(64)]))  # order k, q, v
    x = torch.randn(2, 50, 147)
    with torch.no_grad():
        phi = layer.prm_exp(w0[None, None])
        ref = layer(x)
        out = {}
        for dtype in (torch.bfloat16, torch.float16):
            with torch.autocast("cpu", dtype=dtype):
                out[dtype] = layer(x)
    assert torch.isinf(phi.half()).any() and torch.isfinite(ref).all()
    for dtype, y in out.items():
        assert torch.isfinite(y).all(), dtype
        torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.05)


def test_bf16_autocast_t2t_vit_gives_finite_outputs_close_to_fp32():
    torch.manual_seed(0)
    model = tiny_t2t("performer", img_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
    assert torch.isfinite(bf16).all()
    torch.testing.assert_close(bf16.float(), ref, atol=0.05 * ref.abs().max().item(), rtol=0.05)


# --------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tokens_type", ["performer", "transformer"])
def test_official_checkpoint_gives_the_official_outputs_at_224(tmp_path, tokens_type):
    ref = official_model(224, tokens_type, seed=1)
    noise = {k: v + 1.0 for k, v in ref.state_dict().items()}  # the non-EMA weights: must not be the ones loaded
    save_official(tmp_path / "t2t.pth.tar", noise, ema=ref.state_dict())
    ours = ours_like(224, tokens_type)
    load_pretrained(ours, tmp_path / "t2t.pth.tar", load_head=True)
    assert ours.blocks[0].attn.scale == pytest.approx(32**-0.5)  # head_dim ** -0.5, as the official main.py trained
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected, got = ref(x), ours(x)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("tokens_type", ["performer", "transformer"])
def test_384_checkpoint_into_224_model_matches_the_official_transfer(tmp_path, tokens_type):
    ref384 = official_model(384, tokens_type, seed=2)
    torch.save(ref384.state_dict(), tmp_path / "t2t_384.pth")  # a bare state dict
    ours = ours_like(224, tokens_type)
    report = load_pretrained(ours, tmp_path / "t2t_384.pth", load_head=True)
    assert report.skipped_head == [] and report.resampled == ((24, 24), (14, 14))
    assert (report.family, report.layout, report.missing) == ("t2t_vit", "official", [])
    # the official transfer: build at 224, resize the table with its resize_pos_embed, load
    ref224 = official_model(224, tokens_type, seed=3)
    sd = dict(ref384.state_dict())
    sd["pos_embed"] = official_resize_pos_embed(sd["pos_embed"], ref224.pos_embed)
    ref224.load_state_dict(sd)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref224(x), atol=1e-5, rtol=1e-4)


def test_224_checkpoint_into_384_model_resizes_the_table_as_the_official_code(tmp_path):
    ref = official_model(224, "performer", seed=4)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "t2t.pth")
    ours = ours_like(384, "performer")
    assert load_pretrained(ours, tmp_path / "t2t.pth", load_head=True).resampled == ((14, 14), (24, 24))
    expected = official_resize_pos_embed(ref.pos_embed, torch.zeros(1, 577, 64))
    assert torch.equal(ours.pos_embed.pos_embed, expected)
    assert not ours.pos_embed.pos_embed.requires_grad
    with torch.no_grad():
        assert ours(torch.randn(1, 3, 384, 384)).shape == (1, 5)


def test_checkpoint_keys_ema_choice_head_and_scale(tmp_path):
    ref = official_model(224, "transformer", seed=5)
    plain = {k: v * 2 for k, v in ref.state_dict().items()}
    save_official(tmp_path / "c.pth.tar", plain, ema=ref.state_dict())
    tensors, meta = read(tmp_path / "c.pth.tar")
    assert torch.equal(tensors["head.weight"], ref.head.weight) and meta["nested"] == "state_dict_ema"
    plain_model = T2TViT(img_size=224, tokens_type="transformer", num_classes=5, **REF)
    load_pretrained(plain_model, tmp_path / "c.pth.tar", load_head=True, use_ema=False)
    assert torch.equal(plain_model.head.weight, plain["head.weight"])
    # fine-tuning on 3 classes: the 5-class head is not loaded, everything else is
    ours = T2TViT(img_size=224, tokens_type="transformer", num_classes=3, qk_scale=0.25, **REF)
    head = ours.head.weight.detach().clone()
    assert load_pretrained(ours, tmp_path / "c.pth.tar", load_head=True).skipped_head == ["head.weight", "head.bias"]
    assert torch.equal(ours.head.weight, head) and torch.equal(ours.norm.weight, ref.norm.weight)
    assert ours.blocks[1].attn.scale == 0.25  # an explicit qk_scale is kept


def test_mismatched_checkpoints_name_the_keys_and_the_fix(tmp_path):
    ref = official_model(224, "performer", seed=6)
    sd = ref.state_dict()
    renamed = {k.replace("blocks.1.", "layers.1."): v for k, v in sd.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(ConfigError, match=r"missing keys: blocks\.1\.norm1\.weight.*unexpected keys: layers\.1\.") as e:
        load_pretrained(ours_like(224, "performer"), tmp_path / "renamed.pth")
    assert "in all" in str(e.value)  # counts beyond the first few
    # a performer checkpoint into a transformer model: the w keys are unexpected, the qkv keys missing
    torch.save(sd, tmp_path / "performer.pth")
    with pytest.raises(ConfigError, match=r"attention1\.attn\.qkv\.weight.*attention1\.w.*custom T2T-ViT \(performer"):
        load_pretrained(ours_like(224, "transformer"), tmp_path / "performer.pth")
    # right keys, wrong widths
    with pytest.raises(ConfigError, match=r"shape mismatches.*cls_token \(1, 1, 64\) vs \(1, 1, 32\)"):
        narrow = T2TViT(img_size=224, tokens_type="performer", embed_dim=32, depth=2, num_heads=2)
        load_pretrained(narrow, tmp_path / "performer.pth")
    with pytest.raises(ConfigError, match="learned_1d"):
        load_pretrained(ours_like(224, "performer", pos_embed="sincos_2d"), tmp_path / "performer.pth")


def test_checkpoints_are_read_without_unpickling_code(tmp_path):
    torch.save({"state_dict": {"cls_token": torch.zeros(1)}, "hook": ConfigError("boom")}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="weights_only"):
        load_pretrained(ours_like(224, "performer"), tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrained(ours_like(224, "performer"), tmp_path / "missing.pth.tar")


# --------------------------------------------------------------------------------------------------------------------
T2T_BACKBONE = {
    "class_path": "lit_vit.models.T2TViT",
    "init_args": {"img_size": 32, "in_chans": 1, "tokens_type": "performer", **TINY},
}


def t2t_fit_args(run_dir, backbone=T2T_BACKBONE, img_size=32, **kwargs):
    args = [a for a in tiny_fit_args(run_dir, **kwargs) if not a.startswith("--model.backbone=")]
    return args + [f"--model.backbone={backbone}".replace("'", '"'), f"--data.img_size={img_size}"]


def test_cli_fits_a_tiny_t2t_vit_on_the_digits(run_dir):
    main(t2t_fit_args(run_dir, max_epochs=1))
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["init_args"]["backbone"]["class_path"] == "lit_vit.models.T2TViT"
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert "val/acc1" in rows[0] and len(rows) > 2
    module = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert isinstance(module.backbone, T2TViT) and module.backbone.num_classes == 10
    assert module.backbone.in_chans == 1
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert module.state_dict().keys() == state.keys()  # the checkpoint alone rebuilds the trained model
    assert all(torch.equal(module.state_dict()[k], v) for k, v in state.items())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert module.eval()(x).shape == (2, 10)


@pytest.mark.parametrize(
    "init_args, img_size, message",
    [
        ({"in_chans": 3}, 32, "in_chans: 1"),
        ({"img_size": 24}, 24, "multiples of 16"),
        ({"variant": "T2T-ViT-15"}, 32, "T2T-ViT-15"),
    ],
)
def test_cli_bad_t2t_settings_exit_with_a_clear_error(run_dir, capsys, init_args, img_size, message):
    backbone = {**T2T_BACKBONE, "init_args": {**T2T_BACKBONE["init_args"], **init_args}}
    with pytest.raises(SystemExit) as e:
        main(t2t_fit_args(run_dir, backbone=backbone, img_size=img_size))
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def official_layout(model: T2TViT) -> dict[str, torch.Tensor]:
    """Our state dict under the official key names (the inverse of the loader's single rename)."""
    return {("pos_embed" if k == "pos_embed.pos_embed" else k): v for k, v in model.state_dict().items()}


def test_cli_fine_tunes_from_an_official_checkpoint_given_as_pretrained(run_dir, tmp_path):
    torch.manual_seed(0)
    source = T2TViT(img_size=64, in_chans=1, tokens_type="performer", num_classes=1000, **TINY)  # a 4x4 table
    save_official(tmp_path / "official.pth.tar", official_layout(source))
    backbone = T2T_BACKBONE
    # the official transfer recipe's shape: SGD, the head at its own learning rate; body lr 0 so it must stay as loaded
    recipe = [
        f"--model.pretrained={tmp_path / 'official.pth.tar'}",
        "--model.optimizer=sgd",
        "--model.momentum=0.9",
        "--model.lr=0.0",
        "--model.head_lr=0.05",
    ]
    main(t2t_fit_args(run_dir, backbone=backbone, max_epochs=1, limit_batches=2) + recipe)
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["state_dict"]
    for key in ("tokens_to_token.attention1.w", "tokens_to_token.attention2.kqv.weight", "blocks.1.mlp.fc2.weight"):
        assert torch.equal(state[f"backbone.{key}"], source.state_dict()[key]), key
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert sorted(g["initial_lr"] for g in groups) == [0.0, 0.0, 0.05, 0.05] and all(
        g["momentum"] == 0.9 for g in groups
    )
    assert state["backbone.head.weight"].shape == (10, 32)  # a new head for the 10 digits, and it was trained
    assert state["backbone.head.bias"].abs().sum() > 0  # initialised at zero: non-zero only if SGD updated it
    assert state["backbone.pos_embed.pos_embed"].shape == (1, 5, 32)  # 4x4 table resized to the 2x2 grid of 32 px
    module = ImageClassifier.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert module.backbone.blocks[0].attn.scale == pytest.approx(16**-0.5)  # head_dim ** -0.5: nothing overrides it


def test_classifier_pretrained_route_loads_released_weights_with_the_default_scale(tmp_path):
    ref = official_model(224, "performer", seed=7)
    torch.save({"state_dict": ref.state_dict()}, tmp_path / "t2t.pth")
    ours = ours_like(224, "performer")
    load_pretrained(ours, str(tmp_path / "t2t.pth"), load_head=True)
    assert torch.equal(ours.tokens_to_token.attention2.w, ref.tokens_to_token.attention2.w)
    assert ours.blocks[0].attn.scale == pytest.approx(32**-0.5)  # head_dim ** -0.5, not embed_dim ** -0.5
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)


def test_classifier_refuses_an_unknown_optimizer():
    with pytest.raises(ConfigError, match="unknown optimizer 'lamb'; choose adamw or sgd"):
        ImageClassifier(backbone=tiny_t2t(), optimizer="lamb")
