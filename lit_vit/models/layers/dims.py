"""Model sizes from a named variant plus explicit options, where 0 is an error and never means "the default"."""

from typing import Any

from lit_vit.errors import ConfigError

POSITIVE_INT_KEYS = ("embed_dim", "depth", "num_heads")
POSITIVE_KEYS = ("mlp_ratio",)


def merge_dims(base: dict[str, Any], **given: Any) -> dict[str, Any]:
    """`base` (a variant's sizes) updated with every option that is not None; sizes must be positive."""
    for key, value in given.items():
        if value is None:
            continue
        if key in POSITIVE_INT_KEYS and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(
                f"{key} must be a positive integer, got {value!r}; give e.g. {key}: {base.get(key, 1)} or leave it "
                "unset to take the variant's"
            )
        if key in POSITIVE_KEYS and not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value!r}; e.g. {key}: {base.get(key, 4.0)}")
    return {**base, **{k: v for k, v in given.items() if v is not None}}
