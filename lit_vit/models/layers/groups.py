"""The layers of a block-stacked encoder, as a model declares them for layer-wise lr decay (timm's group_matcher)."""

from collections.abc import Iterable

from torch import nn


def block_layer_ids(model: nn.Module, stem: Iterable[str]) -> dict[str, int]:
    """Layer of every parameter name of a model with a `blocks` list (BEiT's numbering): the top-level parameters and
    modules named in `stem` (embeddings, tokens, position tables) 0, `blocks.i` i + 1, everything else (final norm,
    pooling, head) len(blocks) + 1."""
    stem, last = set(stem), len(model.blocks) + 1
    ids = {}
    for name, _ in model.named_parameters():
        top, _, rest = name.partition(".")
        ids[name] = int(rest.split(".", 1)[0]) + 1 if top == "blocks" else 0 if top in stem else last
    return ids
