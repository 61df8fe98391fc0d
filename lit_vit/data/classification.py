"""LightningDataModules for image classification.

Every module exposes `num_classes`, `class_names`, `in_chans` and `img_size`; the classifier reads them at setup, so
a config never states the number of classes twice.
"""

import tarfile
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from lit_vit.data.augment import AugmentPolicy, as_policy, build_train_transform
from lit_vit.data.datasets import ArrayDataset, ClassificationDataset, FileDataset, list_images, load_pickle_batch
from lit_vit.data.sampling import ResumableDataModule
from lit_vit.data.transforms import eval_transform, train_transform
from lit_vit.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ImageDataModule(ResumableDataModule):
    """Shared loading, augmentation and sampling; subclasses describe where images come from.

    A subclass's constructor takes its own options (and those whose default it changes), and passes the rest on as
    `**kwargs` to this one, by keyword: its `--data.help` lists all of them, documented here.

    Args:
        root: dataset root folder.
        img_size: training / evaluation image size (int or (height, width)).
        batch_size: per-device training batch size.
        eval_batch_size: per-device batch size for validation, test and predict (default: batch_size).
        num_workers: DataLoader worker processes per device.
        pin_memory: pin host memory for faster copies to the GPU (ignored without CUDA).
        persistent_workers: keep workers alive between epochs.
        augment: training crop: rrc (RandomResizedCrop), pad_crop (pad by `pad` pixels then random crop) or none.
        hflip: random horizontal flip in training.
        rrc_scale: area range of RandomResizedCrop.
        pad: padding in pixels for pad_crop.
        crop_pct: evaluation centre-crop fraction (resize the shorter side to size / crop_pct, then centre crop; 1.0:
            plain resize). Default: 0.875 with augment rrc (ImageNet convention), 1.0 with pad_crop / none, which never
            rescale in training: a crop there would show validation objects 14% larger than training did.
        mean: per-channel normalisation mean in [0, 1] (default: the dataset's own).
        std: per-channel normalisation std in [0, 1] (default: the dataset's own).
        seed: seed of the shuffling order and the augmentations (independent of the model's init seed).
        predict_path: image file(s) or folder(s) for `predict`.
        augment_policy: per-image training augmentation after the crop and flip (RandAugment / TrivialAugmentWide /
            AutoAugment, colour jitter, random erasing; see lit_vit.data.augment.AugmentPolicy), or null (none).
    """

    default_mean: tuple[float, ...] = IMAGENET_MEAN
    default_std: tuple[float, ...] = IMAGENET_STD

    def __init__(
        self,
        root: str = "data",
        img_size: int | tuple[int, int] = 224,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        augment: str = "rrc",
        hflip: bool = True,
        rrc_scale: tuple[float, float] = (0.08, 1.0),
        pad: int = 4,
        crop_pct: float | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
        seed: int = 0,
        predict_path: str | list[str] | None = None,
        augment_policy: AugmentPolicy | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        self.root = Path(root)
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
        self.num_workers, self.pin_memory, self.persistent_workers = num_workers, pin_memory, persistent_workers
        if crop_pct is not None and not 0.0 < crop_pct <= 1.0:
            raise ConfigError(f"crop_pct must be in (0, 1], got {crop_pct}; e.g. 0.875 (rrc) or 1.0 (plain resize)")
        if crop_pct is None:  # the eval resize follows the training augmentation
            crop_pct = 0.875 if augment == "rrc" else 1.0
        self.augment, self.hflip, self.rrc_scale, self.pad, self.crop_pct = augment, hflip, rrc_scale, pad, crop_pct
        self.mean, self.std = mean, std
        self.predict_path = predict_path
        self.augment_policy = as_policy(augment_policy)  # a dict when read back from a checkpoint's hyperparameters
        train_transform(self.img_size, (0.5,), (0.5,), augment)  # validates `augment` before anything is read
        self.datasets: dict[str, ClassificationDataset] = {}

    # --- what subclasses provide ---------------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def class_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def in_chans(self) -> int:
        return 3

    def build_split(self, split: str, transform) -> ClassificationDataset:
        """The dataset of one split ('train', 'val' or 'test') with the given transform."""
        raise NotImplementedError

    # --- shared machinery ----------------------------------------------------------------------------------------
    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return tuple(self.mean or self.default_mean), tuple(self.std or self.default_std)

    def transforms(self, train: bool):
        mean, std = self.norm_stats()
        if train:
            return build_train_transform(
                self.img_size, mean, std, self.augment, self.hflip, self.rrc_scale, self.pad, self.augment_policy
            )
        return eval_transform(self.img_size, mean, std, self.crop_pct)

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}[stage]
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self.build_split(split, self.transforms(train=split == "train"))
        if stage == "predict":
            self.datasets["predict"] = self.predict_dataset()

    def predict_dataset(self) -> FileDataset:
        if not self.predict_path:
            raise ConfigError("predict needs images: pass --data.predict_path <image file or folder>")
        paths = [p for entry in np.atleast_1d(self.predict_path) for p in list_images(entry)]
        missing = [str(e) for e in np.atleast_1d(self.predict_path) if not Path(e).exists()]
        if missing or not paths:
            raise ConfigError(
                f"predict_path {missing or self.predict_path} holds no images; "
                "give existing image files or folders (jpg, png, ...)"
            )
        return FileDataset(paths, range(len(paths)), self.transforms(train=False), self.in_chans, on_bad_image="report")

    @property
    def predict_paths(self) -> list[str]:
        return self.datasets["predict"].paths

    def _loader_kwargs(self) -> dict:
        return dict(
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.train_loader(self.datasets["train"], **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["val"], **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["test"], **self._loader_kwargs())

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self.datasets["predict"], **self._loader_kwargs())


class DigitsDataModule(ImageDataModule):
    """The embedded default: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, grey).

    No network and no files: the images ship inside scikit-learn. The split is fixed (seeded with 0, stratified):
    1,259 train / 269 val / 269 test (SPLIT_SIZES gives the proportions, rounded per class). Images are upsampled
    (bicubic) to `img_size`; 16 with patch 4 gives a 4x4 grid whose patches stay aligned under the +-1 pixel
    pad-and-crop augmentation.
    """

    SPLIT_SIZES = {"train": 1257, "val": 270, "test": 270}

    def __init__(
        self,
        img_size: int | tuple[int, int] = 16,
        batch_size: int = 32,
        num_workers: int = 0,
        augment: str = "pad_crop",
        hflip: bool = False,
        rrc_scale: tuple[float, float] = (0.6, 1.0),
        pad: int = 1,
        **kwargs,
    ) -> None:
        # no files (no root) and no eval crop (crop_pct: pad_crop never rescales): neither is an option here
        super().__init__(
            root="", crop_pct=None, img_size=img_size, batch_size=batch_size, num_workers=num_workers,
            augment=augment, hflip=hflip, rrc_scale=rrc_scale, pad=pad, **kwargs,
        )  # fmt: skip
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = None

    @property
    def class_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    @property
    def in_chans(self) -> int:
        return 1

    def arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """The fixed split as (N, 8, 8, 1) uint8 images and int targets."""
        if self._arrays is None:
            from sklearn.datasets import load_digits

            digits = load_digits()
            images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
            targets = digits.target.astype(np.int64)
            rng = np.random.default_rng(0)
            parts: dict[str, list[int]] = {k: [] for k in self.SPLIT_SIZES}
            for c in range(10):  # stratified: each split gets the class proportions of the whole set
                idx = rng.permutation(np.flatnonzero(targets == c))
                n_val = round(len(idx) * self.SPLIT_SIZES["val"] / len(targets))
                n_test = round(len(idx) * self.SPLIT_SIZES["test"] / len(targets))
                parts["val"] += idx[:n_val].tolist()
                parts["test"] += idx[n_val : n_val + n_test].tolist()
                parts["train"] += idx[n_val + n_test :].tolist()
            self._arrays = {k: (images[np.sort(v)], targets[np.sort(v)]) for k, v in parts.items()}
        return self._arrays

    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.mean and self.std:
            return tuple(self.mean), tuple(self.std)
        train = self.arrays()["train"][0] / 255.0
        return tuple(self.mean or (float(train.mean()),)), tuple(self.std or (float(train.std()),))

    def build_split(self, split: str, transform) -> ArrayDataset:
        images, targets = self.arrays()[split]
        return ArrayDataset(images, targets, transform)


CIFAR_LAYOUT = {
    "cifar10": dict(
        folder="cifar-10-batches-py",
        archive="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        train=[f"data_batch_{i}" for i in range(1, 6)],
        test=["test_batch"],
        meta="batches.meta",
        labels="labels",
        names="label_names",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    "cifar100": dict(
        folder="cifar-100-python",
        archive="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        train=["train"],
        test=["test"],
        meta="meta",
        labels="fine_labels",
        names="fine_label_names",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


class CIFARDataModule(ImageDataModule):
    """CIFAR-10 / CIFAR-100 in torchvision's on-disk format (the python batches) under `root`.

    `root/cifar-10-batches-py/` (data_batch_1..5, test_batch, batches.meta) or `root/cifar-100-python/` (train,
    test, meta). The archive is downloaded when `download` is true and the network allows; a `.tar.gz` placed in
    `root` is extracted. Validation holds out `val_size` training images (fixed, seeded split); test is the official
    test set.

    Args:
        name: cifar10 or cifar100.
        val_size: training images held out for validation (0: validate on the test set).
        download: try to download the archive when the folder is missing.
    """

    def __init__(
        self,
        name: str = "cifar10",
        val_size: int = 5000,
        download: bool = True,
        img_size: int | tuple[int, int] = 32,
        augment: str = "pad_crop",
        **kwargs,
    ) -> None:
        if name not in CIFAR_LAYOUT:
            raise ConfigError(f"unknown CIFAR dataset {name!r}; choose one of {', '.join(CIFAR_LAYOUT)}")
        super().__init__(img_size=img_size, augment=augment, **kwargs)
        self.name, self.val_size, self.download = name, val_size, download
        self.layout = CIFAR_LAYOUT[name]
        self.default_mean, self.default_std = self.layout["mean"], self.layout["std"]
        self._class_names: list[str] | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.layout["folder"]

    def _missing(self) -> list[str]:
        files = [*self.layout["train"], *self.layout["test"], self.layout["meta"]]
        return [f for f in files if not (self.folder / f).is_file()]

    def prepare_data(self) -> None:
        if not self._missing():
            return
        archive = self.root / self.layout["archive"]
        if not archive.is_file() and self.download:
            try:
                from torchvision.datasets.utils import download_url

                download_url(self.layout["url"], str(self.root), self.layout["archive"])
            except Exception:  # no network: fall through to the clear error below
                pass
        if archive.is_file():
            with tarfile.open(archive) as tar:
                tar.extractall(self.root, filter="data")
        if self._missing():
            raise ConfigError(
                f"{self.name} not found: missing {', '.join(self._missing())} in {self.folder}. Place "
                f"{self.layout['archive']} (from {self.layout['url']}) in {self.root}/ or extract it there so that "
                f"{self.folder}/ exists, or set --data.init_args.root to the folder that holds it"
            )

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self.prepare_data()
            self._class_names = list(load_pickle_batch(self.folder / self.layout["meta"])[self.layout["names"]])
        return self._class_names

    def _read(self, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [load_pickle_batch(self.folder / f) for f in files]
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        targets = np.concatenate([np.asarray(b[self.layout["labels"]]) for b in batches])
        return np.ascontiguousarray(images), targets.astype(np.int64)

    def build_split(self, split: str, transform) -> ArrayDataset:
        self.prepare_data()
        if split == "test" or (split == "val" and self.val_size == 0):
            return ArrayDataset(*self._read(self.layout["test"]), transform)
        images, targets = self._read(self.layout["train"])
        if self.val_size >= len(targets):
            raise ConfigError(f"val_size {self.val_size} leaves no training images (train has {len(targets)})")
        order = np.random.default_rng(0).permutation(len(targets))
        keep = np.sort(order[self.val_size :] if split == "train" else order[: self.val_size])
        return ArrayDataset(images[keep], targets[keep], transform)


class ImageFolderDataModule(ImageDataModule):
    """Any `root/train/<class>/*`, `root/val/<class>/*` (optionally `root/test/<class>/*`) tree, e.g. ImageNet.

    Class names are the sorted folder names of the training split; without a test folder, test uses val.

    Args:
        root: folder holding the split folders.
        train_dir: name of the training split folder.
        val_dir: name of the validation split folder.
        test_dir: name of the test split folder (falls back to val_dir when absent).
        channels: 3 (RGB) or 1 (grey).
        on_bad_image: an image file that cannot be decoded: error (stop with a message naming it; a fit saves
            last.ckpt first) or skip (opt-in: warn once per file with a running count and train on without it).
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        channels: int = 3,
        on_bad_image: str = "error",
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if on_bad_image not in ("error", "skip"):
            raise ConfigError(f"on_bad_image must be error or skip, got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.channels = channels
        if channels == 1 and self.mean is None:
            self.default_mean, self.default_std = (0.5,), (0.5,)
        self._class_names: list[str] | None = None

    def _split_dir(self, split: str) -> Path:
        path = self.root / self.dirs[split]
        if split == "test" and not path.is_dir():
            path = self.root / self.dirs["val"]
        if not path.is_dir():
            raise ConfigError(
                f"image folder {path} does not exist; expected {self.root}/{self.dirs[split]}/<class>/<image> "
                f"(see data/README.md), or set --data.init_args.root to your dataset folder"
            )
        return path

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            train = self._split_dir("train")
            self._class_names = sorted(p.name for p in train.iterdir() if p.is_dir())
            if not self._class_names:
                raise ConfigError(f"{train} has no class folders; expected {train}/<class>/<image>")
        return self._class_names

    @property
    def in_chans(self) -> int:
        return self.channels

    def build_split(self, split: str, transform) -> FileDataset:
        folder, index = self._split_dir(split), {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in index)
        if unknown:
            raise ConfigError(f"{folder} has class folders not in the training split: {unknown[:5]}")
        paths, targets, empty = [], [], []
        for name in self.class_names:
            files = list_images(folder / name) if (folder / name).is_dir() else []
            if not files:
                empty.append(name)
            paths += files
            targets += [index[name]] * len(files)
        if not paths:
            raise ConfigError(f"no images found under {folder}/<class>/ (extensions: jpg, png, ...)")
        if empty and split == "train":
            raise ConfigError(
                f"{len(empty)} class folder(s) of {folder} hold no images: {', '.join(empty[:5])}; a class without "
                "training images cannot be learned: add images or remove the folder(s)"
            )
        if empty:
            rank_zero_warn(f"{split} split {folder} has no images for {len(empty)} class(es): {', '.join(empty[:5])}")
        return FileDataset(paths, targets, transform, self.channels, on_bad_image=self.on_bad_image)
