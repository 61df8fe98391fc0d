"""Vision Transformer (Dosovitskiy et al., arXiv 2010.11929), with swappable position embedding and pooling."""

import torch
from torch import nn

from lit_vit.models.layers import (
    MAPHead,
    PatchEmbed,
    PoolKind,
    PosEmbedKind,
    TokenEncoder,
    block_layer_ids,
    build_blocks,
    build_pos_embed,
    check_pool,
    grid_size,
    init_weights,
    linear_head,
    to_2tuple,
)
from lit_vit.models.variants import VIT_VARIANTS, vit_dims


class VisionTransformer(TokenEncoder, nn.Module):
    """ViT: patch embedding, optional class token, position embedding, pre-LN blocks, final norm, pooling, head.

    Args:
        variant: named size (Ti, S, B, L, H); sets embed_dim / depth / num_heads unless those are given explicitly.
        img_size: training image size (int or (height, width)); each side must be a multiple of patch_size.
        patch_size: side of the square patches.
        in_chans: number of input channels.
        num_classes: size of the linear head (0 for no head: the model then returns pooled features).
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        mlp_ratio: MLP hidden width as a multiple of D.
        qkv_bias: bias on the query / key / value projection.
        qk_scale: attention logit scale (default head_dim ** -0.5).
        class_token: prepend a learned class token.
        pool: how the image representation is read out: cls (class token), gap (mean of patch tokens, norm after
            pooling as in timm) or map (attention pooling with a learned query).
        pos_embed: how positions enter: none, learned_1d (the paper's default), learned_2d, sincos_2d, relative (a
            learned bias over 2-D offsets in the attention logits), rope_2d (rotary on queries and keys), sincos_1d
            (T2T-ViT's fixed table); the choices are the registered kinds of lit_vit.models.layers.pos_embed.
        drop_rate: dropout after the embeddings, in MLPs and projections.
        attn_drop_rate: dropout on attention weights.
        drop_path_rate: stochastic depth rate, increasing linearly with depth up to this value.
    """

    def __init__(
        self,
        variant: str | None = None,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        class_token: bool = True,
        pool: PoolKind = "cls",
        pos_embed: PosEmbedKind = "learned_1d",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        embed_dim, depth, num_heads = vit_dims(variant, "ViT", embed_dim, depth, num_heads)
        check_pool(pool, class_token)
        self.img_size = to_2tuple(img_size)
        self.grid = grid_size(self.img_size, patch_size)
        self.num_classes, self.embed_dim, self.pool = num_classes, embed_dim, pool
        self.num_prefix_tokens = 1 if class_token else 0

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = build_pos_embed(pos_embed, embed_dim, self.grid, self.num_prefix_tokens, num_heads)
        self.pos_drop = nn.Dropout(drop_rate)
        self.blocks = build_blocks(
            embed_dim,
            depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            drop=drop_rate,
            attn_drop=attn_drop_rate,
            drop_path_rate=drop_path_rate,
        )
        # timm's layout: the final norm acts on all tokens for cls / map, after pooling (fc_norm) for gap
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if pool != "gap" else nn.Identity()
        self.attn_pool = MAPHead(embed_dim, num_heads, mlp_ratio) if pool == "map" else None
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if pool == "gap" else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        # the patch Conv2d keeps PyTorch's default (kaiming uniform) init, as timm does
        for name, child in self.named_children():
            if name != "patch_embed":
                child.apply(init_weights)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)

    @property
    def num_features(self) -> int:
        return self.embed_dim

    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay besides biases and norms (which go by ndim)."""
        return {n for n, _ in self.named_parameters() if n.startswith("pos_embed.") or n in ("cls_token",)}

    def layer_groups(self) -> dict[str, int]:
        """Layer of every parameter name for layer-wise lr decay: embeddings and tokens 0, block i i + 1, the final
        norm, pooling and head depth + 1."""
        return block_layer_ids(self, stem=("patch_embed", "cls_token", "pos_embed"))

    def reset_classifier(self, num_classes: int, zero_init: bool = False) -> None:
        """Replace the head (fine-tuning); zero_init gives the paper's zero-initialised head."""
        self.num_classes = num_classes
        self.head = linear_head(self.embed_dim, num_classes, zero_init)

    def token_grid(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return grid_size(img_size, self.patch_embed.patch_size)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Tokens entering the first block: [class token; patches] + position embedding, and the patch grid."""
        x, grid = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.pos_drop(self.pos_embed(x, grid)), grid

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.pool == "cls":
            x = x[:, 0]
        elif self.pool == "gap":
            x = x[:, self.num_prefix_tokens :].mean(dim=1)
        else:
            x = self.attn_pool(x[:, self.num_prefix_tokens :])
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)


def _factory(variant: str):
    def build(patch_size: int = 16, **kwargs) -> VisionTransformer:
        return VisionTransformer(variant=variant, patch_size=patch_size, **kwargs)

    build.__name__ = build.__qualname__ = f"vit_{variant.lower()}"
    build.__doc__ = f"ViT-{variant}/<patch_size> ({VIT_VARIANTS[variant]})."
    return build


# One factory per row of VIT_VARIANTS (vit_ti, vit_s, vit_b, vit_l, vit_h, `vit_b(patch_size=32)`), made here so that
# a new size is one row there and no code.
VIT_FACTORIES = {f"vit_{variant.lower()}": _factory(variant) for variant in VIT_VARIANTS}
for _name, _build in VIT_FACTORIES.items():
    _build.__module__ = __name__
    globals()[_name] = _build
del _name, _build
