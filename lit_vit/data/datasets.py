"""Map-style datasets that return (CHW float tensor, int target), with per-sample seeded augmentation."""

import pickle
import sys
from collections.abc import Sequence
from pathlib import Path

import albumentations as A
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from lit_vit.errors import BadImageError, ConfigError

BAD_IMAGE_POLICIES = ("error", "skip", "report")

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp", ".gif")


class ClassificationDataset(Dataset):
    """Base: subclasses implement `load(index) -> HWC uint8 array`.

    An item is an index, or (index, seed) from `SeededSampler`; the seed fixes this sample's augmentation.
    """

    def __init__(self, targets: Sequence[int], transform: A.Compose) -> None:
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            self.transform.set_random_seed(seed)
        image = self.transform(image=self.load(index))["image"]
        return image, int(self.targets[index])


class ArrayDataset(ClassificationDataset):
    """Images held in memory as an (N, H, W, C) uint8 array (the embedded digits, CIFAR)."""

    def __init__(self, images: np.ndarray, targets: Sequence[int], transform: A.Compose) -> None:
        super().__init__(targets, transform)
        self.images = images

    def load(self, index: int) -> np.ndarray:
        return self.images[index]


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Decode an image file to HWC uint8 with the requested number of channels (1 grey, 3 RGB)."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            array = np.asarray(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:  # PIL's errors for broken files
        reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
        raise BadImageError.for_file(str(path), reason) from err
    return array[..., None] if array.ndim == 2 else array


class FileDataset(ClassificationDataset):
    """Images read from files on demand (ImageFolder trees, predict inputs).

    `on_bad_image` says what a file that cannot be decoded does: `error` stops with a BadImageError naming it;
    `skip` (opt-in) warns once per file on stderr, with a running count, and uses the next readable file in its place
    (deterministically); `report` (predict) returns a zero image with target -(index + 1), so the caller can list the
    file and write every good row.
    """

    def __init__(
        self,
        paths: Sequence[str],
        targets: Sequence[int],
        transform: A.Compose,
        channels: int = 3,
        on_bad_image: str = "error",
    ) -> None:
        if on_bad_image not in BAD_IMAGE_POLICIES:
            raise ConfigError(f"unknown on_bad_image {on_bad_image!r}; choose one of {', '.join(BAD_IMAGE_POLICIES)}")
        super().__init__(targets, transform)
        self.paths = list(paths)
        self.channels = channels
        self.on_bad_image = on_bad_image
        self.bad_paths: set[str] = set()  # seen by this process (each DataLoader worker has its own)

    def load(self, index: int) -> np.ndarray:
        return read_image(self.paths[index], self.channels)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        if self.on_bad_image == "error":
            try:
                return super().__getitem__(item)
            except BadImageError as err:
                fix = (
                    "remove or replace the file (a fit saved last.ckpt before stopping: resume with --ckpt_path last), "
                    "or set --data.init_args.on_bad_image skip to train on without it"
                )
                raise BadImageError.for_file(err.path, err.reason, fix) from err
        for step in range(len(self.paths)):
            i = (index + step) % len(self.paths)
            try:
                image = self.load(i)
            except BadImageError as err:
                if self.on_bad_image == "report":
                    blank = np.zeros((*self.transform_size(), self.channels), np.uint8)
                    return self.transform(image=blank)["image"], -(index + 1)
                if err.path not in self.bad_paths:
                    self.bad_paths.add(err.path)
                    print(
                        f"warning: skipping unreadable image {err.path} ({len(self.bad_paths)} skipped so far in this "
                        "process; on_bad_image: skip)",
                        file=sys.stderr,
                    )
                continue
            if seed is not None:
                self.transform.set_random_seed(seed)
            return self.transform(image=image)["image"], int(self.targets[i])
        raise ConfigError(f"none of the {len(self.paths)} images can be read (first: {self.paths[0]})")

    def transform_size(self) -> tuple[int, int]:
        """A size that every eval pipeline accepts (it resizes to its own output size)."""
        return (8, 8)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches (dicts, lists, numpy arrays) and refuses everything else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")


def load_pickle_batch(path: str | Path) -> dict:
    """Read a CIFAR python batch safely (no arbitrary code), with string keys."""
    with open(path, "rb") as f:
        batch = _ArrayUnpickler(f, encoding="latin1").load()
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def list_images(path: str | Path) -> list[str]:
    """All image files under a folder (recursively, sorted), or the file itself."""
    path = Path(path)
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)
    return [str(path)]
