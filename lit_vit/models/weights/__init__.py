"""Readers for foreign checkpoints, one module a model family: key layouts of other codebases -> ours, safe loading
(no code runs), and one strict loader (`io.strict_load`) that lists missing / unexpected keys and shape mismatches."""

from lit_vit.models.weights.hybrid import load_hybrid_weights
from lit_vit.models.weights.io import load_state_dict, strict_load
from lit_vit.models.weights.t2t import load_t2t_checkpoint, read_t2t_checkpoint
from lit_vit.models.weights.vilt import load_vilt_weights, read_checkpoint, to_original_vilt
from lit_vit.models.weights.vit import load_vit_weights, vit_from_timm, vit_from_torchvision

__all__ = [
    "load_hybrid_weights",
    "load_state_dict",
    "load_t2t_checkpoint",
    "load_vilt_weights",
    "load_vit_weights",
    "read_checkpoint",
    "read_t2t_checkpoint",
    "strict_load",
    "to_original_vilt",
    "vit_from_timm",
    "vit_from_torchvision",
]
