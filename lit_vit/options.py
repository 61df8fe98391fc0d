"""Option groups given as dataclasses (AugmentPolicy, Mixup): read back from a YAML or a checkpoint's
hyperparameters they arrive as dicts."""

import dataclasses
from typing import Any, TypeVar

from lit_vit.errors import ConfigError

T = TypeVar("T")


def options_from(cls: type[T], value: Any, name: str) -> T | None:
    """`value` as a `cls` (a dataclass): None and instances as they are, a dict by its fields; an unknown field or
    another type is a ConfigError naming option `name` and the allowed fields."""
    if value is None or isinstance(value, cls):
        return value
    fields = [f.name for f in dataclasses.fields(cls)]
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise ConfigError(f"unknown {name} option(s) {unknown}; choose from {', '.join(fields)}")
        return cls(**value)
    raise ConfigError(f"{name} must be a mapping of options or null, got {type(value).__name__}")
