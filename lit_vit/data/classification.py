"""LightningDataModules for image classification.

Every module exposes `num_classes`, `class_names`, `in_chans` and `img_size`; the classifier reads them at setup, so
a config never states the number of classes twice.
"""

import json
import math
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader

from lit_vit.data.augment import AugmentPolicy, as_policy, build_train_transform
from lit_vit.data.batch_augment import (
    AUGMENT_ON,
    DEVICE_CACHE,
    BatchAugment,
    TensorSplit,
    on_canvas,
    resolve_device,
    to_tensor,
)
from lit_vit.data.datasets import (
    ArrayDataset,
    ClassificationDataset,
    FileDataset,
    list_images,
    load_pickle_batch,
    read_image,
)
from lit_vit.data.digits import SPLIT_SIZES, digits_split
from lit_vit.data.sampling import ResumableDataModule
from lit_vit.data.transforms import eval_transform, resize_transform, train_transform
from lit_vit.errors import BadImageError, ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALIZE_KINDS = ("imagenet", "dataset")
NORMALIZE_SAMPLE = 2000  # normalize dataset: the most training images the statistics are computed from
NORMALIZE_FILE = "normalize.json"  # normalize dataset: the statistics, in the run folder
CACHE_KINDS = ("off", "memory")


def check_normalize(value, channels: int, mean_or_std_given: bool) -> str | list[float] | None:
    """The ImageFolder `normalize` option, checked: imagenet, dataset, 2 x channels numbers, or None."""
    fix = "set --data.init_args.normalize"
    if value is not None and mean_or_std_given:
        raise ConfigError(f"normalize {value!r} and mean / std both given; give one ({fix}, or drop mean / std)")
    if value is None or value == "dataset":
        return value
    if value == "imagenet":
        if channels != 3:
            raise ConfigError(f"normalize imagenet has 3 channels but channels is {channels}; {fix} dataset or [m, s]")
        return value
    if isinstance(value, str):
        raise ConfigError(f"normalize is {value!r} but must be imagenet, dataset or [mean..., std...]; {fix}")
    values = list(value)
    if len(values) != 2 * channels or not all(0 <= v <= 1 for v in values) or not all(v > 0 for v in values[channels:]):
        raise ConfigError(
            f"normalize {values} must be {2 * channels} numbers in [0, 1] for {channels} channel(s): the means, then "
            f"the stds (> 0); {fix}"
        )
    return values


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
        augment_on: where training images are augmented: auto, batch (whole batches with tensor ops, from one uint8
            tensor per split: in-memory data only, no augment_policy; DataLoader workers unused) or sample (per
            image with albumentations in DataLoader workers). auto: batch when the data is in memory (digits, CIFAR,
            ImageFolder with cache memory) and no augment_policy is on, else sample; the choice is printed once.
        device_cache: on the batch path, where the splits' uint8 tensors live: auto (on the training GPU when they
            take at most a quarter of its free memory, else host memory), device (on the training device; an error
            when they do not fit) or cpu (host memory, batches copied to the device).
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
        augment_on: str = "auto",
        device_cache: str = "auto",
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
        for name, value, allowed in (
            ("augment_on", augment_on, AUGMENT_ON),
            ("device_cache", device_cache, DEVICE_CACHE),
        ):
            if value not in allowed:
                raise ConfigError(
                    f"{name} is {value!r} but must be one of {', '.join(allowed)}; set --data.init_args.{name}"
                )
        self.augment_on, self.device_cache = augment_on, device_cache
        if augment_on == "batch" and self.augment_policy is not None and self.augment_policy.active:
            raise ConfigError(
                f"augment_on batch cannot apply augment_policy (auto_augment {self.augment_policy.auto_augment!r}, "
                "colour jitter, erasing: per image); set --data.init_args.augment_on sample (or auto), or "
                "--data.init_args.augment_policy null"
            )
        self.datasets: dict[str, ClassificationDataset] = {}
        self.tensor_splits: dict[str, TensorSplit] = {}
        self._announced = False

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

    @property
    def in_memory(self) -> bool:
        """The splits are held decoded in memory (ArrayDataset), so the batch path can serve them."""
        return True

    # --- where training images are augmented -----------------------------------------------------------------------
    def augment_path(self) -> tuple[str, str]:
        """('batch' or 'sample', why): augment_on, or for auto the data (in memory?) and the policy (per image?)."""
        if self.augment_on != "auto":
            return self.augment_on, "augment_on " + self.augment_on
        if self.augment_policy is not None and self.augment_policy.active:
            return "sample", "augment_on auto: augment_policy works per image"
        if not self.in_memory:
            return "sample", "augment_on auto: images are read from files (ImageFolder cache off)"
        return "batch", "augment_on auto: the data is in memory"

    @property
    def batched(self) -> bool:
        return self.augment_path()[0] == "batch"

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
                transform = self.transforms(train=split == "train") if self.norm_ready() else None
                self.datasets[split] = self.build_split(split, transform)
        if stage == "predict":
            self.datasets["predict"] = self.predict_dataset()

    def norm_ready(self) -> bool:
        """The normalisation is known without reading data (else the transforms are made when a loader is: after a
        checkpoint's DataModule state, which may hold it, is restored)."""
        return True

    def _dataset(self, split: str) -> ClassificationDataset:
        dataset = self.datasets[split]
        if dataset.transform is None:
            dataset.transform = self.transforms(train=split == "train")
        return dataset

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    def tensor_split(self, split: str) -> TensorSplit:
        """The split as one uint8 tensor for the batch path: training images at the size the crop reads (pre-resized
        and padded for pad_crop / none, as stored for rrc), evaluation images after the evaluation geometry."""
        if split not in self.tensor_splits:
            dataset = self._dataset(split)
            images, sizes, augment = dataset.images, None, None
            h, w = self.img_size
            if split == "train":
                augment = BatchAugment(self.augment, self.img_size, self.pad, self.hflip, self.rrc_scale)
                if self.augment == "rrc":
                    same = len({im.shape for im in images}) == 1
                    stored, sizes = (to_tensor(images), None) if same else on_canvas(images)
                else:
                    pad = self.pad if self.augment == "pad_crop" else 0
                    resize = resize_transform(self.img_size)
                    resized = [im if im.shape[:2] == (h, w) else resize(image=im)["image"] for im in images]
                    resized = [im[..., None] if im.ndim == 2 else im for im in resized]
                    stored = F.pad(to_tensor(resized), (pad, pad, pad, pad))  # zeros, as albumentations pads
            else:
                geometry = eval_transform(self.img_size, (0.5,), (0.5,), self.crop_pct, normalize=False)
                out = [geometry(image=im)["image"] for im in images]
                stored = to_tensor([im[..., None] if im.ndim == 2 else im for im in out])
            device = resolve_device(self.device_cache, self._device(), stored.numel())
            mean, std = self.norm_stats()
            split_tensor = TensorSplit(stored.to(device), dataset.targets, mean, std, augment, sizes)
            self.tensor_splits[split] = split_tensor
        return self.tensor_splits[split]

    def _announce(self) -> None:
        """One line, once: which augmentation path the training loader takes, and why."""
        if self._announced or (self.trainer is not None and not self.trainer.is_global_zero):
            return
        self._announced = True
        path, why = self.augment_path()
        if path == "batch":
            split = self.tensor_splits["train"]
            where = f"{split.nbytes / 2**20:.1f} MiB uint8 tensor on {split.images.device}"
            line = f"data: batch augmentation ({self.augment}, hflip {self.hflip}; {where}; {why})"
        else:
            line = f"data: per-sample augmentation (albumentations, {self.num_workers} DataLoader workers; {why})"
        print(line, file=sys.stderr)

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
        transform = self.transforms(train=False) if self.norm_ready() else None
        return FileDataset(paths, range(len(paths)), transform, self.in_chans, on_bad_image="report")

    @property
    def predict_paths(self) -> list[str]:
        return self.datasets["predict"].paths

    def _loader_kwargs(self) -> dict:
        return dict(
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _batch_loader_kwargs(self, split: TensorSplit) -> dict:
        pin = self.pin_memory and torch.cuda.is_available() and split.images.device.type == "cpu"
        return dict(num_workers=0, pin_memory=pin)

    def train_dataloader(self) -> DataLoader:
        if self.batched:
            split = self.tensor_split("train")
            loader = self.train_loader(split, batched=True, **self._batch_loader_kwargs(split))
        else:
            loader = self.train_loader(self._dataset("train"), **self._loader_kwargs())
        self._announce()
        return loader

    def _eval_dataloader(self, name: str) -> DataLoader:
        if self.batched:
            split = self.tensor_split(name)
            return self.eval_loader(split, batched=True, **self._batch_loader_kwargs(split))
        return self.eval_loader(self._dataset(name), **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_dataloader("test")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_loader(self._dataset("predict"), **self._loader_kwargs())


class DigitsDataModule(ImageDataModule):
    """The embedded default: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes, grey).

    No network and no files: the images ship inside scikit-learn. The split is fixed (seeded with 0, stratified):
    1,259 train / 269 val / 269 test (SPLIT_SIZES gives the proportions, rounded per class). Images are upsampled
    (bicubic) to `img_size`; 16 with patch 4 gives a 4x4 grid whose patches stay aligned under the +-1 pixel
    pad-and-crop augmentation.
    """

    SPLIT_SIZES = SPLIT_SIZES

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
        """The fixed split as (N, 8, 8, 1) uint8 images and int targets (lit_vit.data.digits)."""
        if self._arrays is None:
            self._arrays = digits_split()
        return self._arrays

    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.mean and self.std:
            return tuple(self.mean), tuple(self.std)
        train = self.arrays()["train"][0] / 255.0
        return tuple(self.mean or (float(train.mean()),)), tuple(self.std or (float(train.std()),))

    def build_split(self, split: str, transform) -> ArrayDataset:
        images, targets = self.arrays()[split]
        return ArrayDataset(images, targets, transform)


@dataclass(frozen=True)
class CIFARLayout:
    """torchvision's on-disk CIFAR: the extracted folder, its archive, the pickled batch files and their keys."""

    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str  # the batch file with the class names
    labels: str  # the key of the labels in a batch
    names: str  # the key of the class names in `meta`
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def url(self) -> str:
        return f"https://www.cs.toronto.edu/~kriz/{self.archive}"


CIFAR_LAYOUT = {
    "cifar10": CIFARLayout(
        "cifar-10-batches-py", "cifar-10-python.tar.gz", tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",),
        "batches.meta", "labels", "label_names", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
    ),
    "cifar100": CIFARLayout(
        "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",),
        "meta", "fine_labels", "fine_label_names", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
    ),
}  # fmt: skip


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
        self.default_mean, self.default_std = self.layout.mean, self.layout.std
        self._class_names: list[str] | None = None

    @property
    def folder(self) -> Path:
        return self.root / self.layout.folder

    def _missing(self) -> list[str]:
        files = [*self.layout.train, *self.layout.test, self.layout.meta]
        return [f for f in files if not (self.folder / f).is_file()]

    def prepare_data(self) -> None:
        if not self._missing():
            return
        archive = self.root / self.layout.archive
        if not archive.is_file() and self.download:
            try:
                from torchvision.datasets.utils import download_url

                download_url(self.layout.url, str(self.root), self.layout.archive)
            except Exception:  # no network: fall through to the clear error below
                pass
        if archive.is_file():
            with tarfile.open(archive) as tar:
                tar.extractall(self.root, filter="data")
        if self._missing():
            raise ConfigError(
                f"{self.name} not found: missing {', '.join(self._missing())} in {self.folder}. Place "
                f"{self.layout.archive} (from {self.layout.url}) in {self.root}/ or extract it there so that "
                f"{self.folder}/ exists, or set --data.init_args.root to the folder that holds it"
            )

    @property
    def class_names(self) -> list[str]:
        if self._class_names is None:
            self.prepare_data()
            self._class_names = list(load_pickle_batch(self.folder / self.layout.meta)[self.layout.names])
        return self._class_names

    def _read(self, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [load_pickle_batch(self.folder / f) for f in files]
        images = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        targets = np.concatenate([np.asarray(b[self.layout.labels]) for b in batches])
        return np.ascontiguousarray(images), targets.astype(np.int64)

    def build_split(self, split: str, transform) -> ArrayDataset:
        self.prepare_data()
        if split == "test" or (split == "val" and self.val_size == 0):
            return ArrayDataset(*self._read(self.layout.test), transform)
        images, targets = self._read(self.layout.train)
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
        normalize: per-channel normalisation: imagenet (ImageNet's mean / std, RGB only), dataset (computed from at
            most 2,000 training images when first needed, written to the run folder as normalize.json and stored in
            the checkpoint: validate / test / predict from it use the same values, whatever the folder holds then),
            [mean..., std...] (2 x channels numbers in [0, 1]), or null (mean / std if given, else imagenet for RGB
            and 0.5 / 0.5 for grey).
        cache: off (decode the files on demand, in DataLoader workers) or memory (decode every split once at setup
            and keep it in memory; small trees: then augment_on auto augments whole batches, see augment_on).
        cache_max_gb: the most memory cache memory may take for the decoded images of all splits, in GB (2**30
            bytes); a larger tree stops at setup with an error naming this option.
    """

    def __init__(
        self,
        root: str = "data/imagenet",
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        channels: int = 3,
        on_bad_image: str = "error",
        normalize: str | list[float] | None = None,
        cache: str = "off",
        cache_max_gb: float = 4.0,
        **kwargs,
    ) -> None:
        if cache not in CACHE_KINDS:
            raise ConfigError(
                f"cache is {cache!r} but must be one of {', '.join(CACHE_KINDS)}; set --data.init_args.cache"
            )
        if not cache_max_gb > 0:
            raise ConfigError(f"cache_max_gb must be > 0 (GB), got {cache_max_gb}; set --data.init_args.cache_max_gb")
        self.cache, self.cache_max_gb = cache, cache_max_gb  # read by in_memory, which the base constructor may ask
        super().__init__(root=root, **kwargs)
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if on_bad_image not in ("error", "skip"):
            raise ConfigError(f"on_bad_image must be error or skip, got {on_bad_image!r}")
        if self.augment_on == "batch" and cache != "memory":
            raise ConfigError(
                "augment_on batch needs the images in memory; set --data.init_args.cache memory (small trees), or "
                "--data.init_args.augment_on sample (or auto)"
            )
        self.on_bad_image = on_bad_image
        self.dirs = {"train": train_dir, "val": val_dir, "test": test_dir}
        self.channels = channels
        if channels == 1 and self.mean is None:
            self.default_mean, self.default_std = (0.5,), (0.5,)
        self.normalize = check_normalize(normalize, channels, self.mean is not None or self.std is not None)
        self.dataset_stats: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._stats_images = 0
        self._cached_bytes = 0
        self._decoded: dict[str, tuple[list[np.ndarray], list[str], list[int]]] = {}
        self._class_names: list[str] | None = None

    @property
    def in_memory(self) -> bool:
        return self.cache == "memory"

    # --- normalisation -----------------------------------------------------------------------------------------
    def norm_ready(self) -> bool:
        return self.normalize != "dataset" or self.dataset_stats is not None

    def norm_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.normalize is None:
            return super().norm_stats()
        if self.normalize == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        if self.normalize == "dataset":
            if self.dataset_stats is None:
                self.dataset_stats = self._stats_from_run_folder() or self.compute_dataset_stats()
                self._write_run_folder_stats()
            return self.dataset_stats
        values, c = [float(v) for v in self.normalize], self.channels
        return tuple(values[:c]), tuple(values[c:])

    def _stats_file(self) -> Path | None:
        trainer = self.trainer
        return Path(trainer.default_root_dir) / NORMALIZE_FILE if trainer is not None else None

    def _stats_from_run_folder(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        path = self._stats_file()
        if path is None or not path.is_file() or self.trainer.state.fn != "fit":  # only this run's own file
            return None
        saved = json.loads(path.read_text())
        return tuple(saved["mean"]), tuple(saved["std"])

    def _write_run_folder_stats(self) -> None:
        path = self._stats_file()
        trainer = self.trainer
        if path is None or trainer.state.fn != "fit" or not trainer.is_global_zero or path.is_file():
            return
        mean, std = self.dataset_stats
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"mean": list(mean), "std": list(std), "images": self._stats_images, "root": str(self.root)}
        path.write_text(json.dumps(record, indent=1) + "\n")

    def compute_dataset_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std of the pixels (in [0, 1]) of the training images, over at most
        NORMALIZE_SAMPLE of them (a fixed, seeded choice); every pixel counts once."""
        paths = self._split_files("train")[0]
        chosen = range(len(paths))
        if len(paths) > NORMALIZE_SAMPLE:
            chosen = np.sort(np.random.default_rng(0).choice(len(paths), NORMALIZE_SAMPLE, replace=False))
        train = self.datasets.get("train")
        cached = train.images if isinstance(train, ArrayDataset) and len(train.images) == len(paths) else None
        total = np.zeros(self.channels)
        squares = np.zeros(self.channels)
        count = 0
        for i in chosen:
            image = cached[i] if cached is not None else read_image(paths[i], self.channels)
            pixels = image.reshape(-1, self.channels).astype(np.float64) / 255.0
            total += pixels.sum(axis=0)
            squares += (pixels**2).sum(axis=0)
            count += len(pixels)
        mean = total / count
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        self._stats_images = len(chosen)
        return tuple(float(m) for m in mean), tuple(float(s) for s in std)

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.normalize == "dataset" and self.dataset_stats is not None:
            state["normalize"] = {"mean": list(self.dataset_stats[0]), "std": list(self.dataset_stats[1])}
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        saved = state.pop("normalize", None)
        if saved is not None and self.normalize == "dataset":
            # the checkpoint's statistics win over the folder's: the weights were trained with them
            self.dataset_stats = (tuple(saved["mean"]), tuple(saved["std"]))
            self.tensor_splits.clear()
            for split, dataset in self.datasets.items():
                dataset.transform = self.transforms(train=split == "train")
        super().load_state_dict(state)

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

    def build_split(self, split: str, transform) -> FileDataset | ArrayDataset:
        paths, targets = self._split_files(split)
        if self.cache == "memory":
            return self._decode_split(split, paths, targets, transform)
        return FileDataset(paths, targets, transform, self.channels, on_bad_image=self.on_bad_image)

    def _decode_split(self, split: str, paths: list[str], targets: list[int], transform) -> ArrayDataset:
        """cache memory: the split decoded once (HWC uint8 arrays), after checking the bound on the image headers;
        later calls (FewShotEval reads the splits with the evaluation transform) share the decoded images."""
        if split in self._decoded:
            images, kept_paths, kept_targets = self._decoded[split]
            dataset = ArrayDataset(images, kept_targets, transform)
            dataset.paths = kept_paths
            return dataset
        sizes = []
        for path in paths:
            try:
                with Image.open(path) as img:
                    sizes.append(img.size[0] * img.size[1] * self.channels)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
                sizes.append(0)  # decoding reports it below, by on_bad_image
        need, bound = self._cached_bytes + sum(sizes), self.cache_max_gb * 2**30
        if need > bound:
            raise ConfigError(
                f"cache memory: the {split} split ({len(paths)} images under {self._split_dir(split)}) decodes to "
                f"{sum(sizes) / 2**20:.1f} MiB, {need / 2**20:.1f} MiB with the splits cached before it, above "
                f"cache_max_gb {self.cache_max_gb:g} ({bound / 2**20:.1f} MiB); set --data.init_args.cache_max_gb "
                f"{math.ceil(need / 2**30 * 100) / 100:g} or more, or --data.init_args.cache off (files read on demand)"
            )
        images, kept_paths, kept_targets = [], [], []
        for path, target in zip(paths, targets):
            try:
                images.append(read_image(path, self.channels))
            except BadImageError as err:
                if self.on_bad_image == "error":
                    raise BadImageError.for_file(
                        err.path, err.reason, "remove or replace the file, or set --data.init_args.on_bad_image skip"
                    ) from err
                print(f"warning: skipping unreadable image {err.path} (on_bad_image: skip)", file=sys.stderr)
                continue
            kept_paths.append(path)
            kept_targets.append(target)
        self._cached_bytes = need
        self._decoded[split] = (images, kept_paths, kept_targets)
        return self._decode_split(split, paths, targets, transform)

    def _split_files(self, split: str) -> tuple[list[str], list[int]]:
        """The image files of a split and their class indices (class folders in sorted order)."""
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
        return paths, targets
