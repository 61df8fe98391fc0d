"""ViLT's image transform: optional augmentation, the ViLT resize rule, normalisation."""

import numpy as np
import torch

from lit_vit.data.transforms import A, ToTensorV2, cv2
from lit_vit.errors import ConfigError

AUGMENT_KINDS = ("none", "affine")


def vilt_resize_shape(h: int, w: int, shorter: int, longer: int, patch: int) -> tuple[int, int]:
    """ViLT's rule: scale the shorter side to `shorter`, cap the longer at `longer`, floor both to the patch size."""
    scale = shorter / min(h, w)
    nh, nw = h * scale, w * scale
    if max(nh, nw) > longer:
        s = longer / max(nh, nw)
        nh, nw = nh * s, nw * s
    nh, nw = int(nh + 0.5) // patch * patch, int(nw + 0.5) // patch * patch
    return max(nh, patch), max(nw, patch)


class ImageTextTransform:
    """HWC uint8 -> optional augmentation (albumentations, seeded per sample) -> ViLT resize -> normalise (0.5, 0.5).

    `affine` (small scale / shift) keeps colours and left / right, which captions and answers talk about.
    """

    def __init__(self, shorter: int, longer: int, patch: int, augment: str = "none") -> None:
        if augment not in AUGMENT_KINDS:
            raise ConfigError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENT_KINDS)}")
        self.shorter, self.longer, self.patch = shorter, longer, patch
        ops = [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), p=0.8)] if augment == "affine" else []
        self.augment = A.Compose(ops, seed=0)
        self.finish = A.Compose([A.Normalize(mean=(0.5,) * 3, std=(0.5,) * 3, max_pixel_value=255.0), ToTensorV2()])

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            self.augment.set_random_seed(seed)
        image = self.augment(image=image)["image"]
        h, w = vilt_resize_shape(image.shape[0], image.shape[1], self.shorter, self.longer, self.patch)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC if h > image.shape[0] else cv2.INTER_AREA)
        return self.finish(image=image)["image"]
