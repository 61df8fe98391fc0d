"""Pre-trained weights for every model family: `read` (the one reader of weights and checkpoint files, no code runs)
and `load_pretrained` (any family, any known key layout, a LoadReport of what was loaded). One module a family maps
the key layouts of other codebases to ours (vit.py: timm / torchvision, hybrid.py: timm hybrids, t2t.py: official
T2T-ViT, vilt.py: original ViLT / HuggingFace); io.py holds the reader and the one strict loader (`strict_load`).

This folder imports the models (to know their classes); the models never import it."""

from lit_vit.models.weights.io import read, strict_load
from lit_vit.models.weights.load import load_pretrained
from lit_vit.models.weights.report import LoadReport
from lit_vit.models.weights.vilt import heads_not_loaded, to_original_vilt
from lit_vit.models.weights.vit import vit_from_timm, vit_from_torchvision

__all__ = [
    "LoadReport",
    "heads_not_loaded",
    "load_pretrained",
    "read",
    "strict_load",
    "to_original_vilt",
    "vit_from_timm",
    "vit_from_torchvision",
]
