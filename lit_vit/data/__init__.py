from lit_vit.data.classification import CIFARDataModule, DigitsDataModule, ImageDataModule, ImageFolderDataModule
from lit_vit.data.image_text import (
    CocoCaptionsDataModule,
    ImageTextDataModule,
    KarpathyDataModule,
    NLVR2DataModule,
    PairsDataModule,
    SceneDataModule,
    SceneNLVR2DataModule,
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
    "NLVR2DataModule",
    "PairsDataModule",
    "SceneDataModule",
    "SceneNLVR2DataModule",
    "VQAv2DataModule",
]
