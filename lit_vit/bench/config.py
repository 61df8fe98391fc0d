"""The backbone and DataModule sections: from --config, the defaults and the command line, built by jsonargparse."""

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentParser, Namespace

from lit_vit.bench.options import build_parser
from lit_vit.errors import ConfigError

# The default run: ViT-Ti/16 at 224 px (1000 classes) against timm, small enough for about a minute on 2 CPU cores.
DEFAULT_BACKBONE = {
    "class_path": "lit_vit.models.VisionTransformer",
    "init_args": {"variant": "Ti", "img_size": 224, "patch_size": 16},
}
DEFAULT_DATA = {"class_path": "lit_vit.data.DigitsDataModule"}
JPEG_DATA = {"class_path": "lit_vit.data.ImageFolderDataModule"}  # --jpeg-tree: its root is the generated tree


def find_section(config: dict, key: str) -> dict | None:
    """The {class_path, init_args} of `key` ('backbone' or 'data') in a bench YAML, a fit config or a bare section."""
    if key == "backbone":
        candidates = [config.get("backbone"), ((config.get("model") or {}).get("init_args") or {}).get("backbone")]
        if "class_path" in config and "data" not in config and "model" not in config:
            candidates.append(config)
    else:
        candidates = [config.get("data")]
    for section in candidates:
        if isinstance(section, dict) and "class_path" in section:
            return {"class_path": section["class_path"], "init_args": dict(section.get("init_args") or {})}
    return None


def load_config(path: str | None) -> dict:
    if path is None:
        return {}
    if not Path(path).is_file():
        raise ConfigError(f"--config {path}: no such file; give a YAML with a backbone (class_path / init_args)")
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping (backbone / data sections), got {type(config).__name__}"
        )
    return config


def parse_args(argv: list[str]) -> tuple[ArgumentParser, Namespace]:
    """The parsed command line. The --config file's backbone and data sections (or the defaults) come first, as if
    given as `--backbone {...} --data {...}` before the user's arguments, so `--backbone.<option>` overrides them."""
    parser = build_parser()
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--config")
    early.add_argument("--jpeg-tree")
    early.add_argument("--mode", nargs="+", default=[])
    known, _ = early.parse_known_args(argv)
    config = load_config(known.config)
    given = {arg.split("=", 1)[0] for arg in argv}
    sections = {"backbone": find_section(config, "backbone"), "data": find_section(config, "data")}
    # a default only where neither the YAML nor the command line names a class (the class of --backbone / --data
    # would inherit the default's options of the same name otherwise)
    if sections["backbone"] is None and "--backbone" not in given:
        sections["backbone"] = DEFAULT_BACKBONE
    if sections["data"] is None and "--data" not in given and "data" in known.mode:
        sections["data"] = JPEG_DATA if known.jpeg_tree is not None else DEFAULT_DATA
    head = [arg for key, section in sections.items() if section for arg in (f"--{key}", json.dumps(section))]
    return parser, parser.parse_args([*head, *argv])


def instantiate(parser: ArgumentParser, cfg: Namespace, key: str) -> Any:
    """The backbone or the DataModule of a parsed config, built by jsonargparse (the other one is left unbuilt)."""
    only = cfg.clone()
    for other in ("backbone", "data"):
        if other != key:
            only[other] = None
    return parser.instantiate_classes(only)[key]


def set_init_arg(section: Namespace, name: str, value: Any, flag: str) -> None:
    if name not in section.init_args:
        raise ConfigError(
            f"{flag} sets the DataModule's {name}, but {section.class_path} has no {name} argument; use a DataModule "
            f"that takes it (e.g. {JPEG_DATA['class_path']}) or leave {flag} out"
        )
    section.init_args[name] = value
