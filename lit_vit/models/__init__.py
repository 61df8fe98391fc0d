"""Plain PyTorch backbones (no Lightning imports)."""

from lit_vit.models.hybrid import HYBRID_VARIANTS, HybridViT
from lit_vit.models.t2t_vit import T2T_VARIANTS, T2TViT
from lit_vit.models.vilt import ViLT
from lit_vit.models.vit import VIT_FACTORIES, VIT_VARIANTS, VisionTransformer

globals().update(VIT_FACTORIES)  # vit_ti ... vit_h, one per named size

__all__ = [
    "HYBRID_VARIANTS",
    "HybridViT",
    "ViLT",
    "T2T_VARIANTS",
    "T2TViT",
    "VIT_VARIANTS",
    "VisionTransformer",
    *VIT_FACTORIES,
]
