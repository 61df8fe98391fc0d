from lit_vit.data.classification import CIFARDataModule, DigitsDataModule, ImageDataModule, ImageFolderDataModule
from lit_vit.data.image_text import (
    CocoCaptionsDataModule,
    ImageTextDataModule,
    KarpathyDataModule,
    SceneDataModule,
    VQAv2DataModule,
)
from lit_vit.data.protocols import ClassificationData, FewShotData

__all__ = [
    "CIFARDataModule",
    "ClassificationData",
    "CocoCaptionsDataModule",
    "DigitsDataModule",
    "FewShotData",
    "ImageDataModule",
    "ImageFolderDataModule",
    "ImageTextDataModule",
    "KarpathyDataModule",
    "SceneDataModule",
    "VQAv2DataModule",
]
