"""timm hybrid ViT checkpoints (vision_transformer_hybrid.py) and lit_vit checkpoints -> lit_vit HybridViT.

Our parameter names are timm's (`patch_embed.backbone.stem.conv`, `patch_embed.backbone.stages.{i}.blocks.{j}.*`,
`patch_embed.proj`, `cls_token`, `blocks.*`, `norm`, `head`; the stem-only R-Ti keeps its stem directly under
`patch_embed.backbone`), except the 1-D position table: timm's `pos_embed` is our `pos_embed.pos_embed`, resampled
to the model's token grid when the image size differs (bicubic, antialiased, float32, class row kept, as timm).
"""

import re

import torch

from lit_vit.errors import ConfigError
from lit_vit.models.hybrid import HybridViT
from lit_vit.models.layers import resample_state_dict
from lit_vit.models.variants import HYBRID_VARIANTS, VIT_VARIANTS
from lit_vit.models.weights.io import HEAD_KEYS, lightning_backbone, strict_load
from lit_vit.models.weights.report import LoadReport, grid_change, report
from lit_vit.models.weights.vit import vit_from_timm

_BLOCK = re.compile(r"^patch_embed\.backbone\.stages\.(\d+)\.blocks\.(\d+)\.")


def describe_hybrid(sd: dict[str, torch.Tensor]) -> str:
    """The architecture a hybrid state dict (our key names) holds, e.g. "R50+ViT-B/16 (layers [3, 4, 9], ...)"."""
    if "patch_embed.proj.weight" not in sd:
        return "no hybrid (no patch_embed.proj)"
    if not any(k.startswith("patch_embed.backbone.") for k in sd):
        return "a plain ViT (no patch_embed.backbone: its tokens are image patches, not a ResNet feature map)"
    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = _BLOCK.match(k)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    layers = tuple(len(blocks[i]) for i in sorted(blocks))
    proj = sd["patch_embed.proj.weight"]
    dim, patch = proj.shape[0], proj.shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    names = [
        n
        for n, v in HYBRID_VARIANTS.items()
        if (v["layers"], v["patch_size"]) == (layers, patch)
        and (dim, depth) == (VIT_VARIANTS[v["vit"]]["embed_dim"], VIT_VARIANTS[v["vit"]]["depth"])
    ]
    what = f"layers {list(layers)}, patch_size {patch}, embed_dim {dim}, depth {depth}"
    return f"{names[0]} ({what})" if names else f"a custom hybrid ({what})"


def hybrid_from_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's hybrid VisionTransformer keys -> ours: only the position table is renamed."""
    return vit_from_timm(sd)


def load_hybrid(model: HybridViT, sd: dict[str, torch.Tensor], source: str, load_head: bool) -> LoadReport:
    """Load timm hybrid or lit_vit (state dict or Lightning checkpoint) weights into `model`: strict keys and shapes,
    any pos_embed resampled to the model's grid; the head only when `load_head` and its shape matches (fine-tuning
    attaches a new head)."""
    sd = lightning_backbone(sd)  # a Lightning checkpoint of ImageClassifier: its backbone's keys
    layout = "lit_vit"
    if "pos_embed" in sd:
        sd, layout = hybrid_from_timm(sd), "timm"
    if not any(k.startswith("patch_embed.backbone.") for k in sd):
        raise ConfigError(
            f"{source} holds {describe_hybrid(sd)}, not a hybrid ViT; load it into lit_vit.models.VisionTransformer, "
            "or give a timm hybrid checkpoint (vit_base_r50_s16_224, ...)"
        )
    own = model.state_dict()
    resampled = grid_change(model.pos_embed, sd)
    sd = resample_state_dict(model.pos_embed, sd)  # any pos_embed kind saved at another grid -> the model's grid
    skipped = strict_load(
        model,
        sd,
        what=f"this hybrid ({describe_hybrid(own)})",
        fix=f"{source} holds {describe_hybrid(sd)}: build the model with that variant (or layers, widths, "
        "patch_size, embed_dim, depth, pool, class_token and pos_embed of the checkpoint's model)",
        optional=HEAD_KEYS,
        load_optional=load_head,
    )
    return report("hybrid", layout, own, sd, skipped, resampled, source)
