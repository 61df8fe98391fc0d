from lit_vit.data.classification import CIFARDataModule, DigitsDataModule, ImageDataModule, ImageFolderDataModule

__all__ = ["CIFARDataModule", "DigitsDataModule", "ImageDataModule", "ImageFolderDataModule"]
