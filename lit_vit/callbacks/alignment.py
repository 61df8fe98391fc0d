"""Word-patch alignment maps of a ViLT model (the ViLT paper's Figure 4), written at the end of fit.

For an (image, caption) pair, each word's mass in WPA's optimal-transport plan between text and image tokens
(`lit_vit.models.vilt.wpa_plan`, the IPOT computation of the WPA loss) is drawn over the image's patch grid, next to
the last layer's attention from that word to the patches (heads averaged). The plain functions: `alignment_maps`
over a collated batch, `caption_alignment` for one caption and one image (a notebook). `ViltAlignmentMaps` writes the
maps of the first validation pairs to `<run dir>/artifacts/alignment_<k>.png`, with the numbers in `alignment.npz`.
"""

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lit_vit.callbacks.artifacts import ARTIFACTS_DIR
from lit_vit.data.image_text.collate import ImageTextCollate
from lit_vit.data.tokenizer import TextTokenizer
from lit_vit.errors import ConfigError
from lit_vit.models.vilt import ViLT, wpa_plan
from lit_vit.plotting import save_alignment_png


@dataclass
class AlignmentMap:
    """One pair's maps: `plan[w]` is word w's transport-plan mass on each patch of the (rows, cols) grid (the masses
    of all words sum to 1; each word's to its share of the text tokens), `attention[w]` the last layer's attention
    from word w to each patch (heads and the word's pieces averaged); `image` is the (unpadded) CHW input."""

    words: list[str]
    plan: np.ndarray
    attention: np.ndarray
    image: np.ndarray


def _last_layer_attention(model: ViLT, args: tuple) -> tuple[dict, torch.Tensor]:
    """The model's output and its last block's attention probabilities (B, heads, N, N), from the block's input."""
    block = model.blocks[-1]
    seen: dict[str, tuple] = {}
    handle = block.register_forward_pre_hook(lambda _module, inputs: seen.setdefault("inputs", inputs))
    try:
        out = model(*args, sample_patches=False)
    finally:
        handle.remove()
    x, attn_bias = seen["inputs"][:2]
    return out, block.attn.attention_probs(block.norm1(x), attn_bias)


@torch.no_grad()
def alignment_maps(model: ViLT, batch: dict[str, torch.Tensor], tokenizer: TextTokenizer) -> list[AlignmentMap]:
    """The alignment maps of every pair of a collated image-text batch (`text_ids`, `text_mask`, `word_ids`, `image`,
    `pixel_mask`, as lit_vit's ImageTextCollate makes them); every patch is kept (no patch sampling)."""
    was_training = model.training
    model.eval()
    try:
        ids, text_mask = batch["text_ids"], batch["text_mask"]
        out, attn = _last_layer_attention(model, (ids, text_mask, batch["image"], batch["pixel_mask"]))
        _, plan, txt_mask, _ = wpa_plan(out)  # plan (B, 1 + P, L): image [CLS] first
    finally:
        model.train(was_training)
    L = ids.shape[1]
    ph, pw = model.patch_embed.patch_size
    gh, gw = batch["image"].shape[-2] // ph, batch["image"].shape[-1] // pw
    maps = []
    for b in range(ids.shape[0]):
        index = out["patch_index"][b]  # (P, 2): (row, col) of every image token after its [CLS]
        rows, cols = (int(v) + 1 for v in index[out["image_mask"][b, 1:]].max(0).values)
        flat = (index[:, 0] * gw + index[:, 1]).cpu()
        tokens = [t for t in range(L) if txt_mask[b, t]]
        words: dict[int, list[int]] = {}  # word id -> its tokens (WordPiece pieces) that take part in the plan
        for t in tokens:
            words.setdefault(int(batch["word_ids"][b, t]), []).append(t)
        names, plan_maps, attn_maps = [], [], []
        for pieces in words.values():
            names.append("".join(tokenizer.vocab[int(ids[b, t])].removeprefix("##") for t in pieces))
            grid = torch.zeros(gh * gw, dtype=torch.float64)
            grid[flat] = plan[b, 1:, pieces].sum(-1).double().cpu()
            plan_maps.append(grid.reshape(gh, gw)[:rows, :cols])
            grid = torch.zeros(gh * gw, dtype=torch.float64)
            grid[flat] = attn[b, :, pieces, L + 1 :].mean((0, 1)).double().cpu()
            attn_maps.append(grid.reshape(gh, gw)[:rows, :cols])
        image = batch["image"][b, :, : rows * ph, : cols * pw].float().cpu().numpy()
        maps.append(AlignmentMap(names, torch.stack(plan_maps).numpy(), torch.stack(attn_maps).numpy(), image))
    return maps


def caption_alignment(model: ViLT, tokenizer: TextTokenizer, image: torch.Tensor, caption: str) -> AlignmentMap:
    """The alignment map of one caption and one image (CHW, transformed as the model's data: e.g.
    `datamodule.transform(False)(hwc_uint8_array)`), e.g. in a notebook with `save_alignment_png` or `draw_patch_map`
    from lit_vit.plotting."""
    batch = ImageTextCollate(tokenizer)([{"image": image, "text": caption, "image_index": 0, "index": 0}])
    device = next(model.parameters()).device
    return alignment_maps(model, {k: v.to(device) for k, v in batch.items()}, tokenizer)[0]


def write_alignment_maps(maps: list[AlignmentMap], out: Path) -> list[Path]:
    """`alignment_<k>.png` per pair and every number in `alignment.npz`; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    arrays = {}
    written = []
    for k, m in enumerate(maps):
        arrays |= {f"plan_{k}": m.plan, f"attention_{k}": m.attention, f"words_{k}": np.array(m.words)}
        arrays[f"image_{k}"] = m.image
        written.append(save_alignment_png(m.image, m.words, m.plan, m.attention, out / f"alignment_{k}.png"))
    np.savez(out / "alignment.npz", **arrays)
    return [*written, out / "alignment.npz"]


class ViltAlignmentMaps(Callback):
    """Writes word-patch alignment maps (the ViLT paper's Figure 4: each word's optimal-transport mass over the patch
    grid, and the last layer's word-to-patch attention) of the first validation pairs to `<run dir>/artifacts/` when
    a ViLT fit ends.

    Args:
        num_pairs: validation (image, text) pairs drawn, one PNG each.
    """

    def __init__(self, num_pairs: int = 4) -> None:
        if num_pairs < 1:
            raise ConfigError(f"num_pairs must be a positive integer, got {num_pairs}")
        self.num_pairs = num_pairs

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.interrupted:
            return
        model, dm = getattr(pl_module, "model", None), trainer.datamodule
        pairs = getattr(dm, "datasets", {}).get("val")
        if not isinstance(model, ViLT) or pairs is None or getattr(dm, "tokenizer", None) is None:
            rank_zero_warn("ViltAlignmentMaps needs a ViLT module and an image-text DataModule: no alignment maps")
            return
        items = [it for it in (pairs[i] for i in range(min(self.num_pairs, len(pairs)))) if it is not None]
        batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in dm.collate()(items).items()}
        write_alignment_maps(alignment_maps(model, batch, dm.tokenizer), Path(trainer.default_root_dir) / ARTIFACTS_DIR)
