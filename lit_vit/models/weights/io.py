"""Reading weights and checkpoint files (`read`, the one reader: no code runs) and the one strict loader
(`strict_load`: missing / unexpected keys and shape mismatches listed, the head skipped or kept)."""

import argparse
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lit_vit.errors import ConfigError

HEAD_KEYS = ("head.weight", "head.bias")  # the classification head of ViT, T2T-ViT and the hybrid
NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")
HF_FILES = ("model.safetensors", "pytorch_model.bin")  # a HuggingFace save_pretrained folder's weights
# top-level entries that make a torch.save dict with a `state_dict` a Lightning checkpoint
_LIGHTNING_KEYS = ("pytorch-lightning_version", "hyper_parameters", "loops", "global_step", "epoch")
EXPECTED = "a .ckpt, .pth, .pth.tar, .bin or .safetensors file (or a HuggingFace save_pretrained folder)"


def read(
    path: str | Path,
    *,
    prefer: tuple[str, ...] = NESTED_KEYS,
    what: str = "weights file",
    expect: str = EXPECTED,
    advice: str = "write the file again or use an earlier copy",
    trusted: tuple[type, ...] = (argparse.Namespace,),
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a weights or checkpoint file: the one reader of lit_vit, no code runs.

    .safetensors files are read with safetensors, everything else with torch.load(weights_only=True) (tensors and
    plain containers only, and the `trusted` types: by default argparse.Namespace, the `args` of timm's training
    script in official T2T-ViT files; the CLI trusts none in a Lightning checkpoint); a folder is a HuggingFace
    save_pretrained folder (model.safetensors or pytorch_model.bin).

    `tensors` is the state dict, taken from the first nesting of `prefer` present (`state_dict_ema`, `model_ema`,
    `state_dict`, `model`, `module`: EMA weights first) or the top level, `module.` prefixes removed; key prefixes of
    a LightningModule (`backbone.`, `model.`) are kept. `meta` is everything else: the other top-level entries (a
    Lightning checkpoint's hyper_parameters, epoch, global_step, ...; a safetensors file's metadata), `format`
    ("safetensors", "lightning" or "torch"), `nested` (the key the tensors came from, or None) and `path`.

    Raises ConfigError naming the file and the fix when it is missing, empty, truncated or damaged, holds Python
    objects (a pickle that could run code), or holds no state dict. `what` / `expect` / `advice` word the messages
    (the CLI's: "checkpoint", "a .ckpt file written by lit_vit", which checkpoint of the run to use instead).
    """
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in HF_FILES if (path / n).is_file()]
        if not found:
            raise ConfigError(
                f"{path} is a folder without model.safetensors or pytorch_model.bin; give a HuggingFace "
                f"save_pretrained folder or {EXPECTED.split(' (')[0]}"
            )
        path = found[0]
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; give the path of {expect}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{what} {path} is empty (0 bytes): it was not written completely; {advice}")
    if path.suffix == ".safetensors":
        return _read_safetensors(path, what, advice)
    obj = _torch_load(path, what, advice, trusted)
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    nested = next((k for k in prefer if isinstance(obj.get(k), dict) and obj[k]), None)
    if nested is not None:
        sd, rest = obj[nested], {k: v for k, v in obj.items() if k != nested}
        if not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ConfigError(
                f"{path}: its `{nested}` entry is not a state dict (a mapping of parameter names to tensors)"
            )
    else:
        sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        rest = {k: v for k, v in obj.items() if not isinstance(v, torch.Tensor)}
    if not sd:
        raise ConfigError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    lightning = nested == "state_dict" or "state_dict" in obj
    fmt = "lightning" if lightning and any(k in obj for k in _LIGHTNING_KEYS) else "torch"
    meta = {**rest, "format": fmt, "nested": nested, "path": str(path)}
    return {str(k).removeprefix("module."): v for k, v in sd.items()}, meta


def _read_safetensors(path: Path, what: str, advice: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
            extra = f.metadata() or {}
    except Exception as err:  # noqa: BLE001 - a damaged file: reported with its name and the fix
        raise ConfigError(
            f"{path} is not a readable {what} (truncated or damaged safetensors file: {type(err).__name__}: "
            f"{(str(err).splitlines() or [''])[0][:160]}); {advice}"
        ) from err
    if not sd:
        raise ConfigError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in sd.items()}, {
        "metadata": extra,
        "format": "safetensors",
        "nested": None,
        "path": str(path),
    }


def _torch_load(path: Path, what: str, advice: str, trusted: tuple[type, ...]) -> Any:
    archive = zipfile.is_zipfile(path)  # torch.save's format; a truncated archive loses its central directory
    try:
        with torch.serialization.safe_globals(list(trusted)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=archive)
    except pickle.UnpicklingError as err:
        if not archive:
            raise ConfigError(
                f"{path} is not a readable {what} (truncated, or not a file written by torch.save or safetensors: "
                f"{(str(err).splitlines() or [''])[0][:160]}); {advice}"
            ) from err
        raise ConfigError(
            f"{path} holds Python objects other than tensors and plain containers, which lit_vit does not unpickle "
            "(weights_only=True: a pickle can run code); re-save the state dict with "
            "torch.save(model.state_dict(), path) or convert it to safetensors, or give a checkpoint written by "
            f"lit_vit ({(str(err).splitlines() or [''])[0][:120]})"
        ) from err
    except Exception as err:  # noqa: BLE001 - a damaged file: reported with its name and the fix
        if not archive:
            raise ConfigError(
                f"{path} is not a readable {what} (truncated, or not a file written by torch.save or safetensors: "
                f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}); {advice}"
            ) from err
        raise ConfigError(
            f"cannot read {what} {path} ({type(err).__name__}: {(str(err).splitlines() or [''])[0][:160]}): "
            f"the file is damaged; {advice}"
        ) from err


def describe_mismatch(missing: list[str], unexpected: list[str], what: str, shapes: list[str] | None = None) -> str:
    """One sentence listing the missing and unexpected keys and the shape mismatches (the first few of each, with
    counts), e.g. "the checkpoint does not match this ViT: missing keys: ...; shape mismatches (3): ..."."""

    def head(keys: list[str]) -> str:
        return ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")

    parts = []
    if missing:
        parts.append(f"missing keys: {head(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {head(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}; checkpoint vs model): {head(shapes)}")
    return f"the checkpoint does not match {what}: " + "; ".join(parts)


def strict_load(
    model: nn.Module,
    sd: dict[str, torch.Tensor],
    *,
    what: str,
    fix: str,
    optional: tuple[str, ...] = (),
    load_optional: bool = True,
    skip_mismatched: bool = True,
) -> list[str]:
    """Load `sd` into `model` with every key and shape checked: the one strict loader of every backbone.

    `optional` are key prefixes (the heads) that may be absent from the checkpoint (they stay as initialised). The
    checkpoint's optional keys are loaded when `load_optional` and the model has them with the same shape; otherwise
    they are skipped (a head for other classes) or, with `skip_mismatched=False`, a shape mismatch is an error. Any
    other missing or unexpected key or shape mismatch raises ConfigError: "the checkpoint does not match <what>: ...
    <fix>". Returns the checkpoint keys deliberately not loaded.
    """
    own = model.state_dict()
    sd = dict(sd)
    is_optional = (lambda key: key.startswith(optional)) if optional else (lambda key: False)
    skipped = [
        k
        for k in sd
        if is_optional(k) and (not load_optional or k not in own or (skip_mismatched and sd[k].shape != own[k].shape))
    ]
    for k in skipped:
        sd.pop(k)
    missing = [k for k in own if k not in sd and not is_optional(k)]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        raise ConfigError(f"{describe_mismatch(missing, unexpected, what, shapes)}. {fix}")
    model.load_state_dict(sd, strict=False)  # strictness checked above, with the optional keys accounted for
    return skipped


def lightning_backbone(sd: dict[str, torch.Tensor], prefix: str = "backbone.") -> dict[str, torch.Tensor]:
    """The backbone's own keys of a lit_vit Lightning checkpoint (`backbone.` / `model.` prefix removed); any
    other state dict as it is."""
    if any(k.startswith(prefix) for k in sd):
        return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    return sd
