"""What a split holds: an image source (files or generated scenes) and its captions or VQA questions."""

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

from lit_vit.data.datasets import read_image
from lit_vit.errors import BadImageError, ConfigError


class ImageFiles:
    """Images read from files; a corrupt file is an error naming it, or skipped with a warning if opted in."""

    def __init__(self, paths: Sequence[str | Path], skip_corrupt: bool = False) -> None:
        self.paths = [str(p) for p in paths]
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def check_exist(self, what: str) -> None:
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise ConfigError(
                f"{len(missing)} of {len(self.paths)} images named in {what} are missing, the first is {missing[0]}; "
                "check the data root and the image folder layout (see data/README.md)"
            )

    def load(self, index: int) -> np.ndarray | None:
        try:
            return read_image(self.paths[index], 3)
        except BadImageError as err:
            if not self.skip_corrupt:
                fix = "remove or replace the file, or set data.skip_corrupt_images: true to skip such images"
                raise BadImageError.for_file(err.path, err.reason, fix) from err
            warnings.warn(f"skipping corrupt image {self.paths[index]}", stacklevel=2)
            return None


class ImageSource(Protocol):
    """The images of a split (`ImageFiles`, `Scenes`): `load(k)` is image k as HWC uint8 RGB, None if skipped."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray | None: ...


class Question(NamedTuple):
    """One VQA question: the index of its image in the split's source, the text, and the annotators' answers."""

    image: int
    text: str
    answers: list[str]


@dataclass(frozen=True)
class SplitRecords:
    """What `ImageTextDataModule.records(split)` returns: the split's images and their texts.

    Attributes:
        images: the image source.
        captions: caption tasks: `captions[k]` are the captions of image k.
        questions: VQA: every question of the split, in file order.
    """

    images: ImageSource
    captions: list[list[str]] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)
