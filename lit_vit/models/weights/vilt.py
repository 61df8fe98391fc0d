"""ViLT checkpoints (the original dandelin/ViLT code, HuggingFace transformers' Vilt*, lit_vit) -> lit_vit ViLT,
and back to the original layout."""

from dataclasses import replace

import torch

from lit_vit.errors import ConfigError
from lit_vit.models.vilt import ViLT, vilt_pos_table
from lit_vit.models.weights.io import lightning_backbone, strict_load
from lit_vit.models.weights.report import LoadReport, report

# Our names <- foreign names that differ only by prefix (HuggingFace, original ViLT).
_TEXT = {
    "text_embed.word_embed.": "word_embeddings.",
    "text_embed.pos_embed.": "position_embeddings.",
    "text_embed.type_embed.": "token_type_embeddings.",
    "text_embed.norm.": "LayerNorm.",
}
_HEADS = {
    "itm_head.": "itm_score.fc.",
    "mlm_head.dense.": "mlm_score.transform.dense.",
    "mlm_head.norm.": "mlm_score.transform.LayerNorm.",
    "vqa_head.": "vqa_classifier.",
    "rank_head.": "rank_output.",
    "nlvr2_head.": "nlvr2_classifier.",
}
# Buffers / tied copies a foreign file may hold that carry no information of their own.
_IGNORED_SUFFIXES = ("position_ids", "token_type_ids", "mlm_score.decoder.weight")


def _rename(sd: dict[str, torch.Tensor], table: dict[str, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    out, unknown = {}, []
    for key, value in sd.items():
        for ours, theirs in table.items():
            if key.startswith(theirs):
                out[ours + key[len(theirs) :]] = value
                break
        else:
            if not key.endswith(_IGNORED_SUFFIXES):
                unknown.append(key)
    return out, unknown


# our prefix -> original ViLT prefix
_ORIGINAL = {o: "text_embeddings." + t for o, t in _TEXT.items()} | _HEADS
_ORIGINAL |= {
    "cls_token": "transformer.cls_token",
    "pos_embed": "transformer.pos_embed",
    "patch_embed.": "transformer.patch_embed.",
    "blocks.": "transformer.blocks.",
    "norm.": "transformer.norm.",
    "modality_embed.": "token_type_embeddings.",
    "pooler.": "pooler.dense.",
}


def convert_original_vilt(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ViLT checkpoint (transformer.blocks.*, text_embeddings.*, itm_score.fc, ...) -> our keys."""
    out, unknown = _rename(sd, _ORIGINAL)
    if "mlm_score.bias" in sd:
        out["mlm_head.bias"] = sd["mlm_score.bias"]
        unknown.remove("mlm_score.bias")
    if unknown:
        raise ConfigError(f"unexpected keys for the original ViLT layout: {unknown[:5]} ({len(unknown)} in all)")
    return out


def to_original_vilt(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our keys -> the original ViLT layout (the inverse of `convert_original_vilt`, decoder weight tied)."""
    inverse = {theirs: ours for ours, theirs in _ORIGINAL.items()}
    out, unknown = _rename({k: v for k, v in sd.items() if k != "mlm_head.bias"}, inverse)
    if unknown:
        raise ConfigError(f"keys with no original ViLT name: {unknown[:5]}")
    out["mlm_score.bias"] = sd["mlm_head.bias"]
    out["mlm_score.decoder.weight"] = sd["text_embed.word_embed.weight"]
    return out


def convert_hf_vilt(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HuggingFace ViltModel / ViltFor* state dict (vilt.embeddings.*, vilt.encoder.layer.*) -> our keys."""
    sd = {k if k.startswith(("vilt.", "mlm_score", "itm_score", "classifier", "rank_output")) else "vilt." + k: v
          for k, v in sd.items()}  # fmt: skip
    table = {o: "vilt.embeddings.text_embeddings." + t for o, t in _TEXT.items()}
    table |= {
        "cls_token": "vilt.embeddings.cls_token",
        "pos_embed": "vilt.embeddings.position_embeddings",
        "patch_embed.proj.": "vilt.embeddings.patch_embeddings.projection.",
        "modality_embed.": "vilt.embeddings.token_type_embeddings.",
        "norm.": "vilt.layernorm.",
        "pooler.": "vilt.pooler.dense.",
        "itm_head.": "itm_score.fc.",
        "mlm_head.dense.": "mlm_score.transform.dense.",
        "mlm_head.norm.": "mlm_score.transform.LayerNorm.",
        "vqa_head.": "classifier.",
        "rank_head.": "rank_output.",
    }
    layer = {
        "norm1.": "layernorm_before.",
        "attn.proj.": "attention.output.dense.",
        "norm2.": "layernorm_after.",
        "mlp.fc1.": "intermediate.dense.",
        "mlp.fc2.": "output.dense.",
    }
    blocks = {k for k in sd if k.startswith("vilt.encoder.layer.")}
    out, unknown = _rename({k: v for k, v in sd.items() if k not in blocks}, table)
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key in sorted(blocks):
        i, rest = key[len("vilt.encoder.layer.") :].split(".", 1)
        if rest.startswith("attention.attention."):
            proj, kind = rest[len("attention.attention.") :].split(".")
            qkv.setdefault((int(i), kind), {})[proj] = sd[key]
            continue
        for ours, theirs in layer.items():
            if rest.startswith(theirs):
                out[f"blocks.{i}.{ours}{rest[len(theirs) :]}"] = sd[key]
                break
        else:
            unknown.append(key)
    for (i, kind), parts in qkv.items():
        out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    # transformers names both the VQA classifier and ViltForImagesAndTextClassification's (NLVR2) pair head
    # `classifier`: the pair head's first layer reads the two images' pooled outputs, (2D, 2D) instead of (2D, D)
    first = out.get("vqa_head.0.weight")
    if first is not None and first.shape[0] == first.shape[1]:
        out = {("nlvr2_head." + k[len("vqa_head.") :] if k.startswith("vqa_head.") else k): v for k, v in out.items()}
    for bias in ("mlm_score.bias", "mlm_score.decoder.bias"):
        if bias in sd:
            out["mlm_head.bias"] = sd[bias]
            if bias in unknown:
                unknown.remove(bias)
    if unknown:
        raise ConfigError(f"unexpected keys for the HuggingFace ViLT layout: {unknown[:5]} ({len(unknown)} in all)")
    return out


def detect_layout(sd: dict[str, torch.Tensor]) -> str:
    """'lit_vit', 'hf' or 'original' from the key names."""
    keys = set(sd)
    if any(k.startswith("vilt.embeddings.") or k.startswith("embeddings.text_embeddings.") for k in keys):
        return "hf"
    if any(k.startswith("transformer.blocks.") for k in keys):
        return "original"
    if any(k.startswith("text_embed.") for k in keys):
        return "lit_vit"
    sample = sorted(keys)[:5]
    raise ConfigError(
        f"cannot recognise the checkpoint layout (first keys: {sample}); expected lit_vit ViLT keys (text_embed.*), "
        "HuggingFace ViLT keys (vilt.embeddings.*) or original ViLT keys (transformer.blocks.*)"
    )


HEADS = ("itm_head.", "mlm_head.", "vqa_head.", "rank_head.", "nlvr2_head.")


def extend_modality_table(model: ViLT, sd: dict[str, torch.Tensor]) -> list[str]:
    """A checkpoint's 2-row modality-type table (text, image) into a model with a third row (NLVR2's second image):
    the new row starts as a copy of the image row, as the official NLVR2 fine-tuning does. Returns what was extended,
    for the LoadReport."""
    key = "modality_embed.weight"
    theirs, rows = sd.get(key), model.modality_embed.num_embeddings
    if theirs is None or theirs.shape[0] >= rows or theirs.shape[0] != 2:
        return []
    sd[key] = torch.cat([theirs, theirs[1:2].expand(rows - 2, -1)])
    return [f"{key}: 2 -> {rows} rows (row 2, the second image's, copied from row 1, the image's)"]


def load_vilt(model: ViLT, sd: dict[str, torch.Tensor], source: str, load_head: bool = True) -> LoadReport:
    """Load a state dict in any known layout into `model`, checking keys and shapes.

    Backbone keys must all be present with matching shapes; head keys (ITM, MLM, VQA, rank) are loaded when both
    sides have them and `load_head` (a head of another shape is an error naming it); the model's heads the
    checkpoint lacks are the report's `missing`. The position table is interpolated when the pre-training grid
    differs.
    """
    sd = dict(lightning_backbone(sd, "model."))  # a lit_vit LightningModule checkpoint; the caller's dict unchanged
    layout = detect_layout(sd)
    if layout == "hf":
        sd = convert_hf_vilt(sd)
    elif layout == "original":
        sd = convert_original_vilt(sd)
    own = model.state_dict()
    resampled = None
    if "pos_embed" in sd and sd["pos_embed"].shape != own["pos_embed"].shape:
        old = sd["pos_embed"]
        g = int(round((old.shape[1] - 1) ** 0.5))
        if g * g != old.shape[1] - 1:
            raise ConfigError(f"position table of shape {tuple(old.shape)} is not a square grid plus a class token")
        table = vilt_pos_table(old[:, 1:].float(), (g, g), model.grid).flatten(1).t()[None]
        sd["pos_embed"] = torch.cat([old[:, :1].float(), table], dim=1).to(old.dtype)
        resampled = ((g, g), tuple(model.grid))
    extended = extend_modality_table(model, sd)
    width = sd["cls_token"].shape[-1] if "cls_token" in sd else None
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    theirs = f"embed_dim {width}, depth {depth}" if width is not None else f"depth {depth}"
    skipped = strict_load(
        model,
        sd,
        what=f"this ViLT (embed_dim {model.embed_dim}, depth {len(model.blocks)})",
        fix=f"The {layout} checkpoint holds a ViLT with {theirs}: set embed_dim / depth / num_heads (and vocab_size, "
        "num_answers) to the checkpoint's values",
        optional=HEADS,
        load_optional=load_head,
        skip_mismatched=False,
    )
    return replace(report("vilt", layout, own, sd, skipped, resampled, source), extended=extended)


def heads_not_loaded(report: LoadReport) -> list[str]:
    """The ViLT heads (itm_head, mlm_head, vqa_head, rank_head, nlvr2_head) a load left as initialised."""
    return sorted({k.split(".")[0] for k in report.missing + report.skipped_head if k.startswith(HEADS)})
