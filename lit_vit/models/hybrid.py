"""Hybrid ViT (ViT paper, section 3.1 "Hybrid Architecture"): the tokens are a ResNet feature map, not image patches.

The ResNet (lit_vit.models.resnetv2, BiT style) turns the image into a feature map of stride 16 or 32; a patch
embedding with patch size 1 (or a small patch, as timm's R-Ti with 8) projects each cell to the transformer width.
Everything after the embedding (class token, every position-embedding kind, blocks, pooling, head) is the
VisionTransformer's. Parameter names are timm's (`patch_embed.backbone.*`, `patch_embed.proj`), so timm hybrid
checkpoints load as they are.
"""

from typing import Any

import torch
from torch import nn

from lit_vit.errors import ConfigError
from lit_vit.models.layers import grid_size, to_2tuple
from lit_vit.models.resnetv2 import build_resnet
from lit_vit.models.variants import HYBRID_VARIANTS, vit_dims
from lit_vit.models.vit import VisionTransformer

RESNET_WIDTHS = (256, 512, 1024, 2048)

# timm name -> (our name, image size)
TIMM_HYBRIDS: dict[str, tuple[str, int]] = {}
for _name, _v in HYBRID_VARIANTS.items():
    TIMM_HYBRIDS[_v["timm"]] = (_name, 224)
    if _name != "R26+ViT-B/32":  # timm has no 384-px R26+ViT-B/32
        TIMM_HYBRIDS[_v["timm"].replace("_224", "_384")] = (_name, 384)


def resolve_variant(variant: str) -> tuple[str, dict, int | None]:
    """(our name, its settings, the image size a timm name implies or None) of a paper or timm variant name."""
    if variant in HYBRID_VARIANTS:
        return variant, HYBRID_VARIANTS[variant], None
    if variant in TIMM_HYBRIDS:
        name, size = TIMM_HYBRIDS[variant]
        return name, HYBRID_VARIANTS[name], size
    raise ConfigError(
        f"unknown hybrid variant {variant!r}; choose one of {', '.join(HYBRID_VARIANTS)} "
        f"(or timm's {', '.join(TIMM_HYBRIDS)}), or leave variant unset and give layers, embed_dim, depth, num_heads"
    )


class HybridEmbed(nn.Module):
    """ResNet feature map -> tokens: the CNN, then a Conv2d with kernel = stride = `feature_patch` on its output.

    `patch_size` is what one token covers in input pixels (CNN stride x feature_patch), so the patch grid, the position
    table and the attention distances of analysis code are in input pixels, as for a plain ViT.
    """

    def __init__(
        self,
        layers: tuple[int, ...] | list[int],
        widths: tuple[int, ...] | list[int],
        feature_patch: int,
        in_chans: int,
        embed_dim: int,
        stem_width: int = 64,
        num_groups: int = 32,
        padding: str = "same",
    ) -> None:
        super().__init__()
        self.backbone, feature_dim, stride = build_resnet(
            layers, widths, in_chans=in_chans, stem_width=stem_width, num_groups=num_groups, padding=padding
        )
        self.in_chans, self.feature_stride, self.feature_patch = in_chans, stride, feature_patch
        self.layers, self.widths, self.stem_width = tuple(layers), tuple(widths[: len(layers)]), stem_width
        self.num_groups, self.padding = num_groups, padding
        self.patch_size = to_2tuple(stride * feature_patch)
        self.proj = nn.Conv2d(feature_dim, embed_dim, kernel_size=feature_patch, stride=feature_patch)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = grid_size(tuple(x.shape[-2:]), self.patch_size)  # a clear error for sizes the grid does not divide
        return self.proj(self.backbone(x)).flatten(2).transpose(1, 2), grid


class HybridViT(VisionTransformer):
    """Hybrid ViT: a ResNet-v2 (StdConv + GroupNorm) feature map as the token grid, then the ViT encoder.

    Args:
        variant: R-Ti/16, R26+ViT-S/32, R26+ViT-B/32, R50+ViT-B/16 or R50+ViT-L/32, or timm's name of one
            (vit_base_r50_s16_224, vit_base_r50_s16_384, ...); sets layers, the ViT size and patch_size unless given.
        img_size: training image size (default: 384 for timm's *_384 names, else 224); each side must be a multiple
            of the token stride (CNN stride x patch_size).
        patch_size: patch size on the CNN feature map (1 in the paper; default the variant's, else 1).
        in_chans: number of input channels.
        num_classes: size of the linear head (0 for no head).
        layers: bottleneck blocks per ResNet stage, e.g. [3, 4, 9] (R50 with stage 4 folded into stage 3); the CNN's
            stride is 4 for the stem alone ([]) and doubles with every stage after the first.
        widths: output channels of the stages (bottleneck width = channels / 4); default ResNet's 256, 512, 1024, 2048.
        stem_width: channels of the 7x7 stem convolution.
        num_groups: GroupNorm groups (every CNN width must be divisible by it; 32 in BiT / timm).
        padding: same (TensorFlow SAME, as timm's hybrids and the original JAX models) or symmetric (PyTorch k // 2).
        embed_dim: token width D (default the variant's).
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        **kwargs: every other option of VisionTransformer (mlp_ratio, qkv_bias, qk_scale, class_token, pool,
            pos_embed, drop_rate, attn_drop_rate, drop_path_rate), the same for the hybrid.
    """

    def __init__(
        self,
        variant: str | None = None,
        img_size: int | tuple[int, int] | None = None,
        patch_size: int | None = None,
        in_chans: int = 3,
        num_classes: int = 1000,
        layers: list[int] | None = None,
        widths: list[int] | None = None,
        stem_width: int = 64,
        num_groups: int = 32,
        padding: str = "same",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        **kwargs: Any,
    ) -> None:
        if variant is not None:
            name, spec, timm_size = resolve_variant(variant)
        else:
            name, spec, timm_size = None, dict(layers=(3, 4, 9), vit="B", patch_size=1), None
        embed_dim, depth, num_heads = vit_dims(spec["vit"], "ViT", embed_dim, depth, num_heads)
        for key, value in (("patch_size", patch_size), ("stem_width", stem_width), ("num_groups", num_groups)):
            if value is not None and value < 1:
                raise ConfigError(f"{key} must be at least 1, got {value}")
        layers = tuple(spec["layers"] if layers is None else layers)
        widths = tuple(RESNET_WIDTHS if widths is None else widths)
        patch_size = spec["patch_size"] if patch_size is None else patch_size
        cnn_stride = 4 * 2 ** (len(layers) - 1) if layers else 4
        super().__init__(
            img_size=img_size if img_size is not None else (timm_size or 224),
            patch_size=cnn_stride * patch_size,  # the token stride in pixels: the grid of the position embedding
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            **kwargs,
        )
        # replaces the ViT's patch Conv2d, in the same place of the module order (timm's key order)
        self.patch_embed = HybridEmbed(
            layers, widths, patch_size, in_chans, self.embed_dim, stem_width, num_groups, padding
        )
        self.variant, self.in_chans = name, in_chans
