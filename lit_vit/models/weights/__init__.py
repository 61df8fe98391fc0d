"""Readers for foreign checkpoints: key layouts of other codebases -> ours, with safe loading."""

from lit_vit.models.weights.io import load_state_dict
from lit_vit.models.weights.t2t import load_t2t_checkpoint, read_t2t_checkpoint
from lit_vit.models.weights.vit import load_vit_weights, vit_from_timm, vit_from_torchvision

__all__ = [
    "load_state_dict",
    "load_t2t_checkpoint",
    "read_t2t_checkpoint",
    "load_vit_weights",
    "vit_from_timm",
    "vit_from_torchvision",
]
