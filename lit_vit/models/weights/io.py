from pathlib import Path

import torch
from torch import nn

from lit_vit.errors import ConfigError

HEAD_KEYS = ("head.weight", "head.bias")  # the classification head of ViT, T2T-ViT and the hybrid
NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")


def read_weights_file(path: str | Path) -> dict:
    """The top-level mapping of a .safetensors / torch.save file, read without running code (safetensors, or
    torch.load(weights_only=True): tensors and plain containers only); a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; give the path of a .pth / .pth.tar / .safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - reported with the file name and the fix
        raise ConfigError(
            f"cannot read {path} as a weights file ({type(err).__name__}: {str(err).splitlines()[0][:200]}). "
            "Only tensors and plain containers are loaded (weights_only=True); re-save the state dict with "
            "torch.save(model.state_dict(), path) or convert it to safetensors"
        ) from err
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return obj


def load_state_dict(path: str | Path, prefer: tuple[str, ...] = NESTED_KEYS) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects (see `read_weights_file`).

    Accepts a bare state dict or one nested under a common key (`state_dict_ema`, `state_dict`, `model`, ...; the
    first of `prefer` present wins). A Lightning checkpoint's `model.` / `backbone.` prefixes are kept as they are.
    """
    obj = read_weights_file(path)
    for key in prefer:
        if isinstance(obj.get(key), dict) and obj[key]:
            obj = obj[key]
            break
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"{path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


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
