"""timm and torchvision ViT checkpoints -> lit_vit VisionTransformer (strict keys, position-embedding resampling)."""

import torch

from lit_vit.errors import ConfigError
from lit_vit.models.layers import resample_state_dict
from lit_vit.models.vit import VisionTransformer
from lit_vit.models.weights.io import HEAD_KEYS, lightning_backbone, strict_load
from lit_vit.models.weights.report import LoadReport, grid_change, report


def vit_from_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's VisionTransformer keys are ours but for the 1-D position table (`pos_embed` -> `pos_embed.pos_embed`)."""
    return {("pos_embed.pos_embed" if k == "pos_embed" else k): v for k, v in sd.items()}


def vit_from_torchvision(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision.models.VisionTransformer -> ours (encoder_layer_<i>.ln_1 / self_attention.in_proj_* / mlp.0 / mlp.3
    are our blocks.<i>.norm1 / attn.qkv / mlp.fc1 / mlp.fc2; class_token, encoder.pos_embedding, conv_proj, heads.head
    are cls_token, the 1-D table, patch_embed.proj, head)."""
    out = {}
    for k, v in sd.items():
        if k.startswith("encoder.layers.encoder_layer_"):
            i, rest = k.removeprefix("encoder.layers.encoder_layer_").split(".", 1)
            rest = (
                rest.replace("ln_1", "norm1")
                .replace("ln_2", "norm2")
                .replace("self_attention.in_proj_", "attn.qkv.")
                .replace("self_attention.out_proj", "attn.proj")
                .replace("mlp.0", "mlp.fc1")
                .replace("mlp.3", "mlp.fc2")
            )
            out[f"blocks.{i}.{rest}"] = v
        else:
            name = {
                "class_token": "cls_token",
                "encoder.pos_embedding": "pos_embed.pos_embed",
                "encoder.ln.weight": "norm.weight",
                "encoder.ln.bias": "norm.bias",
                "heads.head.weight": "head.weight",
                "heads.head.bias": "head.bias",
            }.get(k, k.replace("conv_proj", "patch_embed.proj"))
            out[name] = v
    return out


def _detect(sd: dict[str, torch.Tensor]) -> str:
    if "conv_proj.weight" in sd:
        return "torchvision"
    if "pos_embed" in sd and "patch_embed.proj.weight" in sd:
        return "timm"
    if "patch_embed.proj.weight" in sd or any(k.startswith("backbone.") for k in sd):
        return "lit_vit"  # a bare lit_vit state dict has no `pos_embed` key (learned tables are `pos_embed.<name>`)
    raise ConfigError("unrecognised ViT checkpoint layout: expected timm, torchvision or lit_vit key names")


def load_vit(model: VisionTransformer, sd: dict[str, torch.Tensor], source: str, load_head: bool) -> LoadReport:
    """Load timm / torchvision / lit_vit ViT weights (`sd`, read from `source`) into `model` (strict).

    The position table is resampled to the model's grid (bicubic, antialiased, float32; class-token row kept). The head
    is loaded only when `load_head` and the shapes match (fine-tuning attaches a new head).
    """
    layout = _detect(sd)
    if layout == "timm":
        sd = vit_from_timm(sd)
    elif layout == "torchvision":
        sd = vit_from_torchvision(sd)
    else:
        sd = lightning_backbone(sd)
    own = model.state_dict()
    if ("cls_token" in sd) != ("cls_token" in own):
        has = "has a class token" if "cls_token" in sd else "has no class token (e.g. timm's class_token=False)"
        want = "true, pool: cls" if "cls_token" in sd else "false, pool: gap (or map)"
        raise ConfigError(
            f"{source} ({layout} layout) {has} but this ViT was built with class_token: {'cls_token' in own}; "
            f"set model.init_args.backbone.init_args.class_token: {want}"
        )
    resampled = grid_change(model.pos_embed, sd)
    sd = resample_state_dict(model.pos_embed, sd)  # any kind saved at another grid -> the model's grid
    skipped = strict_load(
        model,
        sd,
        what=f"this ViT ({layout} layout read from {source})",
        fix="Check variant, patch_size, pool and class_token against the checkpoint's model",
        optional=HEAD_KEYS,
        load_optional=load_head,
    )
    return report("vit", layout, own, sd, skipped, resampled, source)
