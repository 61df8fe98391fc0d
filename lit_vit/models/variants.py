"""The named model sizes (the papers' variant tables), below the model and weights modules that both read them."""

from lit_vit.errors import ConfigError
from lit_vit.models.layers.dims import merge_dims

# The paper's variants (Table 1) plus DeiT's Ti and S; the patch size is a separate argument ("ViT-B/16").
VIT_VARIANTS: dict[str, dict[str, int]] = {
    "Ti": dict(embed_dim=192, depth=12, num_heads=3),
    "S": dict(embed_dim=384, depth=12, num_heads=6),
    "B": dict(embed_dim=768, depth=12, num_heads=12),
    "L": dict(embed_dim=1024, depth=24, num_heads=16),
    "H": dict(embed_dim=1280, depth=32, num_heads=16),
}


# The paper's Table 2 models; `_t` variants use the token transformer in the T2T module, the others the performer.
T2T_VARIANTS: dict[str, dict] = {
    "T2T-ViT-7": dict(tokens_type="performer", embed_dim=256, depth=7, num_heads=4, mlp_ratio=2.0),
    "T2T-ViT-10": dict(tokens_type="performer", embed_dim=256, depth=10, num_heads=4, mlp_ratio=2.0),
    "T2T-ViT-12": dict(tokens_type="performer", embed_dim=256, depth=12, num_heads=4, mlp_ratio=2.0),
    "T2T-ViT-14": dict(tokens_type="performer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "T2T-ViT-19": dict(tokens_type="performer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "T2T-ViT-24": dict(tokens_type="performer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
    "T2T-ViT_t-14": dict(tokens_type="transformer", embed_dim=384, depth=14, num_heads=6, mlp_ratio=3.0),
    "T2T-ViT_t-19": dict(tokens_type="transformer", embed_dim=448, depth=19, num_heads=7, mlp_ratio=3.0),
    "T2T-ViT_t-24": dict(tokens_type="transformer", embed_dim=512, depth=24, num_heads=8, mlp_ratio=3.0),
}


# The paper's / augreg's names; `timm` is timm's model name at 224 px (its `_384` twin is the same model at 384).
HYBRID_VARIANTS: dict[str, dict] = {
    "R-Ti/16": dict(timm="vit_tiny_r_s16_p8_224", layers=(), vit="Ti", patch_size=8),
    "R26+ViT-S/32": dict(timm="vit_small_r26_s32_224", layers=(2, 2, 2, 2), vit="S", patch_size=1),
    "R26+ViT-B/32": dict(timm="vit_base_r26_s32_224", layers=(2, 2, 2, 2), vit="B", patch_size=1),
    "R50+ViT-B/16": dict(timm="vit_base_r50_s16_224", layers=(3, 4, 9), vit="B", patch_size=1),
    "R50+ViT-L/32": dict(timm="vit_large_r50_s32_224", layers=(3, 4, 6, 3), vit="L", patch_size=1),
}


def vit_dims(
    variant: str | None, what: str, embed_dim: int | None, depth: int | None, num_heads: int | None
) -> tuple[int, int, int]:
    """(embed_dim, depth, num_heads) of a ViT-style encoder: the named variant's (ViT-B when None) with every given
    size on top; an unknown name, a size < 1 or a width not divisible by the heads is a ConfigError."""
    if variant is not None and variant not in VIT_VARIANTS:
        raise ConfigError(
            f"unknown {what} variant {variant!r}; choose one of {', '.join(VIT_VARIANTS)} "
            "or leave variant unset and give embed_dim, depth and num_heads"
        )
    dims = merge_dims(dict(VIT_VARIANTS[variant or "B"]), embed_dim=embed_dim, depth=depth, num_heads=num_heads)
    if dims["embed_dim"] % dims["num_heads"]:
        raise ConfigError(
            f"embed_dim {dims['embed_dim']} is not divisible by num_heads {dims['num_heads']}; change one of them"
        )
    return dims["embed_dim"], dims["depth"], dims["num_heads"]
