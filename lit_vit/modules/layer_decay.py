"""Layer-wise learning-rate decay for fine-tuning (BEiT / MAE): deeper layers keep more of the peak lr."""

from torch import nn

from lit_vit.errors import ConfigError

# Top-level parameters and modules that come before the first block (layer 0); everything after the blocks (final
# norm, pooling, fc_norm, head) is the read-out, layer depth + 1.
EMBEDDING_NAMES = ("patch_embed", "tokens_to_token", "cls_token", "reg_token", "pos_embed")


def layer_id(name: str, depth: int) -> int:
    """BEiT's layer index of a backbone parameter: embeddings 0, `blocks.i` i + 1, the rest depth + 1."""
    top = name.split(".", 1)[0]
    if top == "blocks":
        return int(name.split(".")[1]) + 1
    if top in EMBEDDING_NAMES:
        return 0
    return depth + 1


def layer_decay_lrs(backbone: nn.Module, lr: float, decay: float) -> dict[int, float]:
    """id(parameter) -> lr * decay ** (depth + 1 - layer_id) for every trainable parameter of a backbone with
    `blocks` (ViT, T2T-ViT)."""
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList | nn.Sequential):
        raise ConfigError(
            f"layer_decay needs a backbone with a `blocks` list (ViT, T2T-ViT); {type(backbone).__name__} has none; "
            "remove --model.init_args.layer_decay"
        )
    depth = len(blocks)
    return {
        id(p): lr * decay ** (depth + 1 - layer_id(name, depth))
        for name, p in backbone.named_parameters()
        if p.requires_grad
    }
