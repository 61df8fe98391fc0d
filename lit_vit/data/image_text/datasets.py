"""Datasets over a split: (image, text) pairs, and the image x text grid of a retrieval evaluation."""

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from lit_vit.data.image_text.sources import ImageSource
from lit_vit.data.image_text.transform import ImageTextTransform
from lit_vit.errors import ConfigError


class PairDataset(Dataset):
    """(image, text) pairs: item -> dict(image, text, image_index[, targets]); None when a corrupt image is skipped.

    `targets` (VQA) is a list of (answer label, soft score).
    """

    def __init__(
        self,
        images: ImageSource,
        pairs: Sequence[tuple[int, str]],
        transform: ImageTextTransform,
        targets: Sequence[list[tuple[int, float]]] | None = None,
    ) -> None:
        self.images, self.pairs, self.transform, self.targets = images, list(pairs), transform, targets

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image_index, text = self.pairs[index]
        image = self.images.load(image_index)
        if image is None:
            return None
        out = {"image": self.transform(image, seed), "text": text, "image_index": image_index, "index": index}
        if self.targets is not None:
            out["targets"] = self.targets[index]
        return out


class RetrievalGridDataset(Dataset):
    """Every (image, text) combination of the first `num_images` images of an evaluation split, image-major: item
    k = (k // T, k % T).

    `text_image[j]` is the image (a grid row) that text j describes.
    """

    def __init__(
        self,
        images: ImageSource,
        num_images: int,
        texts: Sequence[str],
        text_image: Sequence[int],
        transform: ImageTextTransform,
    ) -> None:
        self.images, self.transform = images, transform
        self.num_images, self.texts = num_images, list(texts)
        self.text_image = torch.tensor(list(text_image))  # text j describes image text_image[j] (a grid row)
        self._cache: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.num_images * len(self.texts)

    def __getitem__(self, k: int) -> dict:
        i, j = divmod(k, len(self.texts))
        if self._cache is None or self._cache[0] != i:  # consecutive items share the image: decode it once
            image = self.images.load(i)
            if image is None:
                raise ConfigError(f"evaluation image {i} is corrupt; retrieval needs every image")
            self._cache = (i, self.transform(image))
        return {"image": self._cache[1], "text": self.texts[j], "image_index": i, "index": j}
