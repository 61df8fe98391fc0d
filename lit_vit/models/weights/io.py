from pathlib import Path

import torch

from lit_vit.errors import ConfigError

NESTED_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model", "module")


def load_state_dict(path: str | Path, prefer: tuple[str, ...] = NESTED_KEYS) -> dict[str, torch.Tensor]:
    """Read a checkpoint without unpickling arbitrary objects (safetensors or torch.load(weights_only=True)).

    Accepts a bare state dict or one nested under a common key (`state_dict_ema`, `state_dict`, `model`, ...; the
    first of `prefer` present wins). A Lightning checkpoint's `model.` / `backbone.` prefixes are kept as they are.
    """
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
    if isinstance(obj, dict):
        for key in prefer:
            if isinstance(obj.get(key), dict) and obj[key]:
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
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
