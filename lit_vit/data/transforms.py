"""albumentations pipelines for image classification (HWC uint8 numpy in, normalised CHW tensor out)."""

import os
import random

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations pings the network on import otherwise

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from lit_vit.errors import ConfigError  # noqa: E402

AUGMENT_KINDS = ("rrc", "pad_crop", "none")
GOLDEN = 0x9E3779B9  # spreads the per-transform seeds of one sample seed apart


class SeededCompose(A.Compose):
    """albumentations' Compose whose `set_random_seed` gives each transform a seed of its own.

    Compose 2.0.8 seeds every transform with the same seed, so each transform's first draw is the same number: a
    flip (p 0.5) came exactly when RandomCrop's vertical position was in its lower half, and RandomResizedCrop's area
    decided the flip in the same way (tests/test_batch_augment.py measures the offsets and flips).
    """

    def set_random_seed(self, seed: int | None) -> None:
        if seed is None:
            super().set_random_seed(seed)
            return
        # BaseCompose.set_random_seed (2.0.8) with a seed per transform; not calling it seeds each transform once
        self.seed = seed
        self.random_generator = np.random.default_rng(seed)
        self.py_random = random.Random(seed)
        for i, transform in enumerate(self.transforms):
            transform.set_random_seed((seed + GOLDEN * (i + 1)) % 2**32)


def train_transform(
    img_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: str = "rrc",
    hflip: bool = True,
    rrc_scale: tuple[float, float] = (0.08, 1.0),
    pad: int = 4,
    normalize: bool = True,
) -> A.Compose:
    """Training pipeline: RandomResizedCrop (ImageNet style) or pad-and-crop (CIFAR style), optional flip.

    normalize=False stops after the geometry (HWC uint8 out) for the torchvision policy ops of lit_vit.data.augment.
    """
    h, w = img_size
    if augment == "rrc":
        ops = [A.RandomResizedCrop(size=(h, w), scale=tuple(rrc_scale), interpolation=cv2.INTER_CUBIC)]
    elif augment == "pad_crop":
        ops = [
            A.Resize(h, w, interpolation=cv2.INTER_CUBIC),
            A.PadIfNeeded(h + 2 * pad, w + 2 * pad, border_mode=cv2.BORDER_CONSTANT, fill=0),
            A.RandomCrop(h, w),
        ]
    elif augment == "none":
        ops = [A.Resize(h, w, interpolation=cv2.INTER_CUBIC)]
    else:
        raise ConfigError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENT_KINDS)}")
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if normalize:
        ops += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return SeededCompose(ops, seed=0)


def eval_transform(
    img_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    crop_pct: float = 1.0,
    normalize: bool = True,
) -> A.Compose:
    """Evaluation pipeline: resize (shorter side to size / crop_pct, then centre crop when crop_pct < 1), normalise.

    normalize=False stops after the geometry (HWC uint8 out): the batched path normalises whole batches."""
    h, w = img_size
    if crop_pct < 1.0:
        ops = [
            A.SmallestMaxSize(max_size=int(round(max(h, w) / crop_pct)), interpolation=cv2.INTER_CUBIC),
            A.CenterCrop(h, w),
        ]
    else:
        ops = [A.Resize(h, w, interpolation=cv2.INTER_CUBIC)]
    if normalize:
        ops += [A.Normalize(mean=mean, std=std, max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(ops)


def resize_transform(img_size: tuple[int, int]) -> A.Compose:
    """The deterministic first step of the pad_crop / none training pipelines (HWC uint8 in and out), which the
    batched path applies once per image when it stores a split."""
    return A.Compose([A.Resize(*img_size, interpolation=cv2.INTER_CUBIC)])
