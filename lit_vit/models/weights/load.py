"""`load_pretrained(model, path)`: the one way to put pre-trained weights into a lit_vit model, every family."""

from pathlib import Path

import torch
from torch import nn

from lit_vit.errors import ConfigError
from lit_vit.models.hybrid import HybridViT
from lit_vit.models.t2t_vit import T2TViT
from lit_vit.models.vilt import ViLT
from lit_vit.models.vit import VisionTransformer
from lit_vit.models.weights.hybrid import load_hybrid
from lit_vit.models.weights.io import NESTED_KEYS, read
from lit_vit.models.weights.report import LoadReport
from lit_vit.models.weights.t2t import load_t2t
from lit_vit.models.weights.vilt import load_vilt
from lit_vit.models.weights.vit import load_vit

EMA_KEYS = ("state_dict_ema", "model_ema")


def load_pretrained(
    model: nn.Module,
    path: str | Path | dict[str, torch.Tensor],
    *,
    load_head: bool | None = None,
    use_ema: bool = True,
    source: str | None = None,
) -> LoadReport:
    """Load pre-trained weights into `model` (a VisionTransformer, HybridViT, T2TViT or ViLT) and say what was loaded.

    `path` is a weights or checkpoint file (read by `read`: safe, any nesting, a lit_vit Lightning checkpoint's
    backbone) or a state dict already read. Every key and shape is checked (a mismatch is a ConfigError naming the
    keys and the fix); the position embedding is resampled to the model's grid when the file's differs.

    Args:
        load_head: load the checkpoint's head when its shape is the model's. Default: no for the image classifiers
            (fine-tuning attaches a new head), yes for ViLT (its ITM / MLM / VQA / rank heads).
        use_ema: take the file's EMA weights (`state_dict_ema`, `model_ema`) when it has them.
        source: the name of a state dict's file, for messages and the report (default: the path, or "a state dict").

    Returns a LoadReport: tensors loaded, head keys skipped, the position grid resampled (from, to), missing and
    unexpected keys.
    """
    if isinstance(path, dict):
        sd, source = path, source or "a state dict"
    else:
        prefer = NESTED_KEYS if use_ema else tuple(k for k in NESTED_KEYS if k not in EMA_KEYS)
        sd, source = read(path, prefer=prefer)[0], source or str(path)
    if isinstance(model, HybridViT):  # before VisionTransformer: a HybridViT is one
        return load_hybrid(model, sd, source, bool(load_head))
    if isinstance(model, VisionTransformer):
        return load_vit(model, sd, source, bool(load_head))
    if isinstance(model, T2TViT):
        return load_t2t(model, sd, source, bool(load_head))
    if isinstance(model, ViLT):
        return load_vilt(model, sd, source, load_head is None or load_head)
    raise ConfigError(
        f"lit_vit cannot load pretrained weights into a {type(model).__name__}: load_pretrained knows "
        "VisionTransformer, HybridViT, T2TViT and ViLT; load other backbones' weights yourself before training"
    )
