from lit_vit.data.classification import CIFARDataModule, DigitsDataModule, ImageDataModule, ImageFolderDataModule
from lit_vit.data.image_text import (
    CocoCaptionsDataModule,
    ImageTextDataModule,
    KarpathyDataModule,
    SceneDataModule,
    VQAv2DataModule,
)

__all__ = [
    "CIFARDataModule",
    "CocoCaptionsDataModule",
    "DigitsDataModule",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageTextDataModule",
    "KarpathyDataModule",
    "SceneDataModule",
    "VQAv2DataModule",
]
