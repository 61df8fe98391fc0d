"""T2T-ViT (Yuan et al., arXiv 2101.11986): Tokens-to-Token module and deep-narrow ViT backbone.

Module and parameter names follow the official code (`tokens_to_token.attention1`, `blocks.0.attn.qkv`, ...), so
its checkpoints load with a single rename (see lit_vit/models/weights/t2t.py).
"""

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from lit_vit.errors import ConfigError
from lit_vit.models.layers import (
    Mlp,
    PosEmbedKind,
    TokenEncoder,
    block_layer_ids,
    build_blocks,
    build_pos_embed,
    init_weights,
    linear_head,
    merge_dims,
    to_2tuple,
)
from lit_vit.models.variants import T2T_VARIANTS

TOKEN_TYPES = ("performer", "transformer")
REDUCTION = 16  # soft splits with strides 4, 2, 2


def _canonical(name: str) -> str:
    return name.lower().replace("-", "_")


def resolve_variant(variant: str) -> str:
    """Paper name ("T2T-ViT_t-14") from itself or the official factory name ("t2t_vit_t_14")."""
    names = {_canonical(k): k for k in T2T_VARIANTS}
    if _canonical(variant) not in names:
        raise ConfigError(
            f"unknown T2T-ViT variant {variant!r}; choose one of {', '.join(T2T_VARIANTS)} (or the official names "
            "t2t_vit_14, t2t_vit_t_14, ...), or leave variant unset and give embed_dim, depth and num_heads"
        )
    return names[_canonical(variant)]


def t2t_grid(img_size: int | tuple[int, int]) -> tuple[int, int]:
    """Token grid of an image: each side / 16. Sides that are not multiples of 16 are refused with the fix."""
    h, w = to_2tuple(img_size)
    if h <= 0 or w <= 0 or h % REDUCTION or w % REDUCTION:
        fix = "x".join(str(max(REDUCTION, (s + REDUCTION // 2) // REDUCTION * REDUCTION)) for s in (h, w))
        raise ConfigError(
            f"T2T-ViT needs image sides that are multiples of {REDUCTION} (soft splits with strides 4, 2, 2), got "
            f"{h}x{w}; use e.g. {fix} (img_size of the model and of the data)"
        )
    return h // REDUCTION, w // REDUCTION


class TokenAttention(nn.Module):
    """Single-head attention from width `dim` to `token_dim`, with the skip connection through v.

    The logit scale is dim ** -0.5 of the INPUT width (147 or 576 for RGB), as in the official code and weights.
    """

    def __init__(self, dim: int, token_dim: int) -> None:
        super().__init__()
        self.scale = dim**-0.5
        self.qkv = nn.Linear(dim, 3 * token_dim, bias=False)
        self.proj = nn.Linear(token_dim, token_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, 1, N, 3, -1).permute(3, 0, 1, 2, 4).unbind(0)  # each B, 1, N, token_dim
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return v.squeeze(1) + self.proj(out.squeeze(1))  # widths differ, so no residual around attention


class TokenTransformer(nn.Module):
    """Official `Token_transformer`: out = attn(LN(x)) (skip through v), then out + MLP(LN(out)), MLP ratio 1."""

    def __init__(self, dim: int, token_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TokenAttention(dim, token_dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = Mlp(token_dim, token_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TokenPerformer(nn.Module):
    """Official `Token_performer`: single-head linear attention with positive random features (Performer).

    phi(x) = exp(w x - |x|^2 / 2) / sqrt(m) with a frozen orthogonal w (m = token_dim * kernel_ratio rows, scaled by
    sqrt(m), kept in the state dict); y = phi(q) (phi(k)^T v) / (phi(q) . sum_t phi(k_t) + 1e-8); out = v + proj(y),
    then out + MLP(LN(out)). The kernel runs in float32 even under autocast: in fp16 the exp overflows and the division
    gives NaN (a known failure of the official code). Dropout 0.1 after proj and in the MLP, as in the official code.
    """

    def __init__(self, dim: int, token_dim: int, kernel_ratio: float = 0.5, drop: float = 0.1) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.kqv = nn.Linear(dim, 3 * token_dim)
        self.dp = nn.Dropout(drop)
        self.proj = nn.Linear(token_dim, token_dim)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(token_dim)
        self.mlp = nn.Sequential(
            nn.Linear(token_dim, token_dim), nn.GELU(), nn.Linear(token_dim, token_dim), nn.Dropout(drop)
        )
        m = int(token_dim * kernel_ratio)
        self.w = nn.Parameter(nn.init.orthogonal_(torch.empty(m, token_dim)) * math.sqrt(m), requires_grad=False)

    def prm_exp(self, x: torch.Tensor) -> torch.Tensor:
        """Positive random features (B, T, m) of float32 x (B, T, token_dim)."""
        w = self.w.float()
        return torch.exp(x @ w.t() - (x * x).sum(dim=-1, keepdim=True) / 2) / math.sqrt(w.shape[0])

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        k, q, v = self.kqv(x).split(self.token_dim, dim=-1)
        device = x.device.type  # "meta" (shape analysis) has no autocast to switch off
        with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
            kp, qp = self.prm_exp(k.float()), self.prm_exp(q.float())
            normaliser = qp @ kp.sum(dim=1).unsqueeze(-1)  # B, T, 1
            y = (qp @ (kp.transpose(1, 2) @ v.float())) / (normaliser + 1e-8)
        return v + self.dp(self.proj(y))  # the skip goes through v, as in the token transformer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(self.norm1(x))
        return x + self.mlp(self.norm2(x))


TOKEN_LAYERS = {"performer": TokenPerformer, "transformer": TokenTransformer}


class T2TModule(nn.Module):
    """Tokens-to-Token: soft split (unfold 7/4/2), re-structurize, soft split (3/2/1), re-structurize, soft split.

    Each re-structurization is a token layer (transformer or performer) of width token_dim whose output tokens are
    put back on their 2-D grid before the next overlapping split; the last split's tokens are projected to embed_dim.
    An H x W image gives (H/16) x (W/16) tokens.
    """

    def __init__(self, tokens_type: str, in_chans: int, embed_dim: int, token_dim: int = 64) -> None:
        super().__init__()
        if tokens_type not in TOKEN_LAYERS:
            raise ConfigError(f"unknown tokens_type {tokens_type!r}; choose one of {', '.join(TOKEN_TYPES)}")
        layer = TOKEN_LAYERS[tokens_type]
        self.soft_split0 = nn.Unfold(kernel_size=7, stride=4, padding=2)
        self.soft_split1 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.soft_split2 = nn.Unfold(kernel_size=3, stride=2, padding=1)
        self.attention1 = layer(in_chans * 7 * 7, token_dim)
        self.attention2 = layer(token_dim * 3 * 3, token_dim)
        self.project = nn.Linear(token_dim * 3 * 3, embed_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        B = x.shape[0]
        gh, gw = t2t_grid(tuple(x.shape[-2:]))
        x = self.attention1(self.soft_split0(x).transpose(1, 2))  # B, (H/4)(W/4), token_dim
        x = x.transpose(1, 2).reshape(B, -1, 4 * gh, 4 * gw)
        x = self.attention2(self.soft_split1(x).transpose(1, 2))  # B, (H/8)(W/8), token_dim
        x = x.transpose(1, 2).reshape(B, -1, 2 * gh, 2 * gw)
        return self.project(self.soft_split2(x).transpose(1, 2)), (gh, gw)


class T2TViT(TokenEncoder, nn.Module):
    """T2T-ViT: T2T module, class token, position embedding, deep-narrow pre-LN blocks, final norm, head.

    Args:
        variant: named model: T2T-ViT-7, -10, -12, -14, -19, -24 (performer) or T2T-ViT_t-14, _t-19, _t-24
            (transformer); official names such as t2t_vit_t_14 work too. Sets tokens_type, embed_dim, depth,
            num_heads and mlp_ratio unless those are given explicitly (unset: the sizes of T2T-ViT-14).
        img_size: training image size (int or (height, width)); each side must be a multiple of 16.
        tokens_type: token layer of the T2T module: performer or transformer.
        in_chans: number of input channels.
        num_classes: size of the linear head (0 for no head: the model then returns class-token features).
        embed_dim: token width D of the backbone.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        token_dim: width of the token layers inside the T2T module (64 in all released models).
        qkv_bias: bias on the query / key / value projection of the blocks (off in the official models).
        qk_scale: attention logit scale of the blocks (default head_dim ** -0.5, the scale the official training
            script used for every released checkpoint; the factories' embed_dim ** -0.5 branch never loads them).
        pos_embed: sincos_1d (the official fixed 1-D sinusoid table, frozen) or any other registered kind, as
            VisionTransformer.
        drop_rate: dropout after the embeddings, in MLPs and projections of the blocks.
        attn_drop_rate: dropout on attention weights of the blocks.
        drop_path_rate: stochastic depth rate, increasing linearly with depth up to this value.

    Official or lit_vit weights: `lit_vit.models.weights.load_pretrained(model, path)` (in a run:
    `model.init_args.pretrained`).
    """

    def __init__(
        self,
        variant: str | None = None,
        img_size: int | tuple[int, int] = 224,
        tokens_type: str | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float | None = None,
        token_dim: int = 64,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        pos_embed: PosEmbedKind = "sincos_1d",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        dims = dict(T2T_VARIANTS[resolve_variant(variant) if variant is not None else "T2T-ViT-14"])
        given = dict(
            tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio
        )
        dims = merge_dims(dims, **given)
        embed_dim, depth, num_heads = dims["embed_dim"], dims["depth"], dims["num_heads"]
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}; change one of them")
        self.img_size = to_2tuple(img_size)
        self.grid = t2t_grid(self.img_size)
        self.in_chans, self.num_classes, self.embed_dim = in_chans, num_classes, embed_dim
        self.tokens_type, self.qk_scale = dims["tokens_type"], qk_scale
        self.num_prefix_tokens = 1

        self.tokens_to_token = T2TModule(self.tokens_type, in_chans, embed_dim, token_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = build_pos_embed(pos_embed, embed_dim, self.grid, self.num_prefix_tokens, num_heads)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = build_blocks(
            embed_dim,
            depth,
            num_heads=num_heads,
            mlp_ratio=dims["mlp_ratio"],
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            drop_path_rate=drop_path_rate,
            norm_eps=1e-5,  # the official code's nn.LayerNorm default (ViT uses 1e-6)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_weights)  # trunc normal 0.02 for every Linear, T2T module included, as the official code
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def num_features(self) -> int:
        return self.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms (which go by ndim)."""
        return {n for n, _ in self.named_parameters() if n.startswith("pos_embed.") or n == "cls_token"}

    def layer_groups(self) -> dict[str, int]:
        """Layer of every parameter name for layer-wise lr decay: the T2T module, class token and position
        embedding 0, block i i + 1, the final norm and head depth + 1."""
        return block_layer_ids(self, stem=("tokens_to_token", "cls_token", "pos_embed"))

    def set_qk_scale(self, scale: float | None) -> None:
        """Attention logit scale of every block (None: head_dim ** -0.5)."""
        self.qk_scale = scale
        for block in self.blocks:
            block.attn.scale = scale if scale is not None else block.attn.head_dim**-0.5

    def reset_classifier(self, num_classes: int, zero_init: bool = False) -> None:
        """Replace the head (fine-tuning); zero_init gives a zero-initialised head."""
        self.num_classes = num_classes
        self.head = linear_head(self.embed_dim, num_classes, zero_init)

    def token_grid(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return t2t_grid(img_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the first block: [class token; T2T tokens] + position embedding, and the token grid."""
        x, grid = self.tokens_to_token(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(self.pos_embed(x, grid)), grid

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x[:, 0]
        return x if pre_logits else self.head(x)
