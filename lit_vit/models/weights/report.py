"""LoadReport: what `load_pretrained` did, the same for every model family."""

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class LoadReport:
    """What a `load_pretrained` call loaded.

    Attributes:
        family: the model family the weights went into (vit, hybrid, t2t_vit, vilt).
        layout: the key layout the file was read in (timm, torchvision, official, hf, original, lit_vit).
        loaded: the number of tensors loaded into the model.
        skipped_head: the checkpoint's head keys deliberately not loaded (fine-tuning attaches a new head).
        resampled: (the checkpoint's grid, the model's grid) when the position embedding was resampled, else None.
        missing: the model's keys the checkpoint has no tensor for (left as initialised: heads it lacks).
        unexpected: the checkpoint's keys not loaded besides the skipped head (a strict load has none).
        source: the file read, or "a state dict".
        extended: tensors the checkpoint holds in a smaller size, grown as the reference fine-tuning does (ViLT's
            modality-type table 2 -> 3 rows for NLVR2), one description each.
    """

    family: str
    layout: str
    loaded: int
    skipped_head: list[str] = field(default_factory=list)
    resampled: tuple[tuple[int, int], tuple[int, int]] | None = None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    source: str = ""
    extended: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the log, e.g. "loaded 150 tensors of a timm vit from x.pth; position embedding resampled
        14x14 -> 24x24; not loaded: head.weight, head.bias"."""
        parts = [f"loaded {self.loaded} tensors of a {self.layout} {self.family} from {self.source}"]
        if self.resampled is not None:
            (a, b), (c, d) = self.resampled
            parts.append(f"position embedding resampled {a}x{b} -> {c}x{d}")
        if self.extended:
            parts.append(f"extended: {', '.join(self.extended)}")
        if self.missing:
            more = f", ... ({len(self.missing)} in all)" if len(self.missing) > 6 else ""
            parts.append(f"left as initialised: {', '.join(self.missing[:6])}{more}")
        if self.unexpected:
            parts.append(f"unexpected: {', '.join(self.unexpected[:6])}")
        if self.skipped_head:
            parts.append(f"not loaded: {', '.join(self.skipped_head)}")
        elif not self.missing and not self.unexpected:
            parts.append("every tensor of the checkpoint was loaded")
        return "; ".join(parts)


def grid_change(
    pos_embed: nn.Module, sd: dict[str, torch.Tensor], prefix: str = "pos_embed."
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(the grid `sd`'s position embedding was saved at, `pos_embed`'s grid) when they differ and the entries are of
    `pos_embed`'s own kind (what `resample_state_dict` resamples), else None."""
    state = {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    if not state or set(state) != set(pos_embed.state_dict()):
        return None
    old, new = tuple(pos_embed.stored_grid(state)), tuple(pos_embed.grid)
    return (old, new) if old != new else None


def report(
    family: str,
    layout: str,
    own: dict[str, torch.Tensor],
    sd: dict[str, torch.Tensor],
    skipped: list[str],
    resampled: tuple[tuple[int, int], tuple[int, int]] | None,
    source: str,
) -> LoadReport:
    """The report of a strict load of `sd` into a model whose state dict was `own`, `skipped` left out."""
    return LoadReport(
        family=family,
        layout=layout,
        loaded=sum(1 for k in sd if k not in skipped),
        skipped_head=list(skipped),
        resampled=resampled,
        missing=[k for k in own if k not in sd],
        unexpected=[],
        source=source,
    )
