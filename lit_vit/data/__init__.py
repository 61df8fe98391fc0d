"""lit_vit's LightningDataModules, imported on first use (PEP 562): importing one submodule (lit_vit.data.protocols,
read by the few-shot callback that the CLI imports) does not import every DataModule and albumentations with it, so
commands that need no data start faster. `from lit_vit.data import DigitsDataModule` and the class paths of configs
(`lit_vit.data.DigitsDataModule`) work as before."""

import importlib
from typing import Any

# name -> the module that defines it
_EXPORTS = {
    "CIFARDataModule": "lit_vit.data.classification",
    "DigitsDataModule": "lit_vit.data.classification",
    "ImageDataModule": "lit_vit.data.classification",
    "ImageFolderDataModule": "lit_vit.data.classification",
    "CocoCaptionsDataModule": "lit_vit.data.image_text",
    "ImageTextDataModule": "lit_vit.data.image_text",
    "KarpathyDataModule": "lit_vit.data.image_text",
    "NLVR2DataModule": "lit_vit.data.image_text",
    "PairsDataModule": "lit_vit.data.image_text",
    "SceneDataModule": "lit_vit.data.image_text",
    "SceneNLVR2DataModule": "lit_vit.data.image_text",
    "VQAv2DataModule": "lit_vit.data.image_text",
    "ClassificationData": "lit_vit.data.protocols",
    "FewShotData": "lit_vit.data.protocols",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lit_vit.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


__all__ = sorted(_EXPORTS)
