"""Official T2T-ViT checkpoints (yitu-opensource/T2T-ViT) -> lit_vit T2TViT.

The official key names (tokens_to_token.attention1, blocks.<i>.attn.qkv, ...) are ours but for the position table:
`pos_embed` (1, N+1, D) -> `pos_embed.pos_embed`. The released files were written by timm's training script: a dict with
`state_dict`,
`state_dict_ema`, the optimizer state and the training `args` (an argparse.Namespace, the one non-tensor object
that `io.read` lets through its safe unpickler).
"""

import torch

from lit_vit.errors import ConfigError
from lit_vit.models.layers import resample_state_dict, resample_table
from lit_vit.models.t2t_vit import T2TViT
from lit_vit.models.variants import T2T_VARIANTS
from lit_vit.models.weights.io import HEAD_KEYS, lightning_backbone, strict_load
from lit_vit.models.weights.report import LoadReport, grid_change, report


def describe_checkpoint(sd: dict[str, torch.Tensor]) -> str:
    """What model a state dict came from, e.g. "T2T-ViT_t-14 (transformer, embed_dim 384, depth 14)"."""
    if "cls_token" not in sd:
        return "not a T2T-ViT (no cls_token)"
    tokens = "performer" if "tokens_to_token.attention1.w" in sd else "transformer"
    dim = sd["cls_token"].shape[-1]
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    names = [
        name
        for name, v in T2T_VARIANTS.items()
        if (v["tokens_type"], v["embed_dim"], v["depth"]) == (tokens, dim, depth)
    ]
    return f"{names[0] if names else 'a custom T2T-ViT'} ({tokens}, embed_dim {dim}, depth {depth})"


def t2t_from_official(sd: dict[str, torch.Tensor], model: T2TViT) -> dict[str, torch.Tensor]:
    """Rename the position table and resample it to the model's token grid (2-D bicubic, class row kept). A lit_vit
    checkpoint (ImageClassifier .ckpt or a T2TViT state dict, any pos_embed kind) is resampled by its own kind.

    The table is interpolated rather than regenerated, as the official code does between 224 and 384 px: the 384-px
    checkpoints were fine-tuned with a table interpolated from the 224 one (it is frozen, so it stays that way), and
    interpolation keeps each patch's code tied to its place in the image. No antialiasing, as the official resize.
    """
    sd = dict(lightning_backbone(sd))  # a lit_vit ImageClassifier .ckpt: its backbone's own keys
    if "pos_embed" in sd:
        if "pos_embed.pos_embed" not in model.state_dict():
            raise ConfigError(
                "official T2T-ViT checkpoints carry a 1-D position table (pos_embed, (1, N+1, D)) but this model was "
                "built with another position embedding; set pos_embed: sincos_1d (the official one) or learned_1d"
            )
        table = sd.pop("pos_embed")
        if table.ndim == 3:  # (1, 1 + H*W, D) at the checkpoint's square grid -> the model's grid, class row kept
            table = resample_table(table, model.num_prefix_tokens, model.grid, antialias=False)
        sd["pos_embed.pos_embed"] = table
    return resample_state_dict(model.pos_embed, sd)  # lit_vit checkpoints of any kind saved at another grid


def load_t2t(model: T2TViT, sd: dict[str, torch.Tensor], source: str, load_head: bool = True) -> LoadReport:
    """Load an official T2T-ViT checkpoint or a lit_vit T2T-ViT one (.ckpt or state dict, any pos_embed kind and
    image size) into `model` with strict key and shape checking.

    The head is loaded when `load_head` and its size is the model's; else it is skipped (left as initialised:
    fine-tuning on other classes). The attention scale is left as the model has it: the released weights were
    trained with the default head_dim ** -0.5 (the official main.py never passes qk_scale), so an explicit qk_scale is
    kept as given.
    """
    own = model.state_dict()
    layout = "official" if "pos_embed" in sd else "lit_vit"
    if "pos_embed" in sd and sd["pos_embed"].ndim == 3:  # (1, 1 + H*W, D) at the checkpoint's square grid
        n = sd["pos_embed"].shape[1] - model.num_prefix_tokens
        g = int(round(n**0.5))
        resampled = ((g, g), tuple(model.grid)) if g * g == n and (g, g) != tuple(model.grid) else None
    else:
        resampled = grid_change(model.pos_embed, lightning_backbone(sd))
    converted = t2t_from_official(sd, model)
    skipped = strict_load(
        model,
        converted,
        what=f"this T2T-ViT ({model.tokens_type}, embed_dim {model.embed_dim}, depth {len(model.blocks)}, "
        f"in_chans {model.in_chans})",
        fix=f"{source} holds {describe_checkpoint(lightning_backbone(sd))}: build the model with that variant (and "
        "in_chans 3, token_dim 64), or check that the file is an official T2T-ViT checkpoint",
        optional=HEAD_KEYS,
        load_optional=load_head,
    )
    return report("t2t_vit", layout, own, converted, skipped, resampled, source)
