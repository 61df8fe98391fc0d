"""The models timed: the backbone as given, a ViLT as an image-text matcher, and timm's twin of a ViT or hybrid."""

import torch
from torch import nn

from lit_vit.errors import ConfigError


class ViltITM(nn.Module):
    """A ViLT as an image classifier for timing: image-text matching logits (2 classes) of each image paired with a
    fixed random caption of max_text_len tokens (full pixel mask, so patch sampling applies as in training)."""

    def __init__(self, vilt: nn.Module) -> None:
        super().__init__()
        self.vilt = vilt
        self.num_classes, self.in_chans = 2, vilt.patch_embed.proj.in_channels
        self.img_size = tuple(g * p for g, p in zip(vilt.grid, vilt.patch_embed.patch_size))
        ids = torch.randint(1, vilt.vocab_size, (1, vilt.max_text_len), generator=torch.Generator().manual_seed(0))
        self.register_buffer("text_ids", ids, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        ids = self.text_ids.expand(image.shape[0], -1)
        return self.vilt.itm_logits(self.vilt(ids, torch.ones_like(ids), image))


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the backbone expects, from its patch embedding and `img_size`."""
    size = getattr(model, "img_size", None)
    if size is None:
        raise ConfigError(f"{type(model).__name__} has no img_size attribute; the bench cannot size its input batch")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    chans = getattr(model, "in_chans", None) or (convs[0].in_channels if convs else 3)
    h, w = (size, size) if isinstance(size, int) else size
    return int(chans), int(h), int(w)


def timm_hybrid_backbone(embed: nn.Module) -> nn.Module:
    """timm's ResNet of a lit_vit HybridEmbed: the ResNetV2 (or the bare stem) that timm's hybrids build."""
    from functools import partial

    from timm.layers import GroupNormAct, StdConv2d, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem

    same = embed.padding == "same"
    conv = partial(StdConv2dSame if same else StdConv2d, eps=1e-8)
    norm = partial(GroupNormAct, num_groups=embed.num_groups)
    common = dict(stem_type="same" if same else "", preact=False, conv_layer=conv, norm_layer=norm)
    if not embed.layers:
        return create_resnetv2_stem(embed.in_chans, out_chs=embed.stem_width, **common)
    return ResNetV2(
        layers=embed.layers, channels=embed.widths, num_classes=0, global_pool="", in_chans=embed.in_chans,
        stem_chs=embed.stem_width, **common,
    )  # fmt: skip


def timm_twin(model: nn.Module) -> tuple[nn.Module | None, str]:
    """timm's VisionTransformer (with timm's HybridEmbed for a HybridViT) with `model`'s architecture and weights,
    or None and the reason."""
    from lit_vit.models import HybridViT, VisionTransformer

    if type(model) not in (VisionTransformer, HybridViT):
        name = type(model.vilt if isinstance(model, ViltITM) else model).__name__
        return None, f"no timm counterpart for {name}"
    pos = type(model.pos_embed).__name__
    kinds = {"LearnedPosEmbed1d": "learn", "PosEmbed": "none"}
    if pos not in kinds:
        return None, f"timm's VisionTransformer has no {pos} position embedding"
    try:
        import timm.models.vision_transformer as timm_vit
    except ImportError:
        return None, "timm is not installed (pip install timm)"
    block = model.blocks[0] if len(model.blocks) else None
    if block is not None and abs(block.attn.scale - block.attn.head_dim**-0.5) > 1e-12:
        return None, "qk_scale differs from head_dim ** -0.5, which timm cannot express"
    if isinstance(model, HybridViT):
        from functools import partial

        from timm.layers import HybridEmbed

        embed = dict(
            patch_size=model.patch_embed.feature_patch,
            in_chans=model.in_chans,
            embed_layer=partial(HybridEmbed, backbone=timm_hybrid_backbone(model.patch_embed)),
        )
    else:
        embed = dict(patch_size=model.patch_embed.patch_size, in_chans=model.patch_embed.proj.in_channels)
    twin = timm_vit.VisionTransformer(
        img_size=model.img_size,
        num_classes=model.num_classes,
        global_pool={"cls": "token", "gap": "avg", "map": "map"}[model.pool],
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads if block is not None else 1,
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim if block is not None else 4.0,
        qkv_bias=block.attn.qkv.bias is not None if block is not None else True,
        class_token=model.cls_token is not None,
        pos_embed=kinds[pos],
        **embed,
    )
    state = {("pos_embed" if k == "pos_embed.pos_embed" else k): v for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin, ""
