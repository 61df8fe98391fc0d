"""Weight initialisation and classification heads shared by every backbone."""

from torch import nn


def init_weights(module: nn.Module) -> None:
    """timm-style init: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def linear_head(dim: int, num_classes: int, zero_init: bool = False) -> nn.Module:
    """A new classification head (identity for num_classes 0); zero_init gives the paper's fine-tuning head."""
    if num_classes <= 0:
        return nn.Identity()
    head = nn.Linear(dim, num_classes)
    init_weights(head)
    if zero_init:
        nn.init.zeros_(head.weight)
    return head
