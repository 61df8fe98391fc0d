"""Plain PyTorch backbones (no Lightning imports)."""

from lit_vit.models.hybrid import HYBRID_VARIANTS, HybridViT
from lit_vit.models.t2t_vit import T2T_VARIANTS, T2TViT
from lit_vit.models.vilt import ViLT
from lit_vit.models.vit import VIT_VARIANTS, VisionTransformer, vit_b, vit_h, vit_l, vit_s, vit_ti

__all__ = [
    "HYBRID_VARIANTS",
    "HybridViT",
    "ViLT",
    "T2T_VARIANTS",
    "T2TViT",
    "VIT_VARIANTS",
    "VisionTransformer",
    "vit_b",
    "vit_h",
    "vit_l",
    "vit_s",
    "vit_ti",
]
