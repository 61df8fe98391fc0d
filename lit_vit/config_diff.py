"""Configs as flat {dotted.key: value} maps, to say exactly which options two configs set differently."""

from pathlib import Path
from typing import Any


def plain(value: Any) -> Any:
    """A config value as plain data: jsonargparse Namespaces -> dicts, tuples -> lists, paths -> strings."""
    if hasattr(value, "as_dict"):  # a jsonargparse Namespace
        value = value.as_dict()
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    return str(value) if isinstance(value, Path) else value


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """{"a.b": 1, "a.c": [..]} from {"a": {"b": 1, "c": [..]}} (lists are leaves)."""
    value = plain(value)
    if isinstance(value, dict) and value:
        return {
            k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}" if prefix else key).items()
        }
    return {prefix: value}


def differences(mine: Any, theirs: Any, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(key, mine, theirs) for every key set differently on the two sides (a key missing on one side counts as None),
    skipping keys in `ignore` and keys under an ignored prefix ending with '.'."""
    a, b = flatten(mine), flatten(theirs)
    out = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or any(p.endswith(".") and key.startswith(p) for p in ignore):
            continue
        if a.get(key) != b.get(key):
            out.append((key, a.get(key), b.get(key)))
    return out


def describe(diffs: list[tuple[str, Any, Any]], here: str = "here", there: str = "there", limit: int = 6) -> str:
    text = "; ".join(f"{k}: {v!r} {here}, {c!r} {there}" for k, v, c in diffs[:limit])
    return text + (f" (and {len(diffs) - limit} more)" if len(diffs) > limit else "")
