"""What the image classifier and FewShotEval read from a DataModule, written down as Protocols.

Every lit_vit image DataModule (lit_vit.data.ImageDataModule and its subclasses) provides both; a DataModule of your
own works with ImageClassifier / FewShotEval when it has these attributes. `require` checks one at setup and names
what is missing, looking the names up without running properties (on Python 3.11 `isinstance` against a
@runtime_checkable Protocol reads every property, and a DataModule's may read its data).
"""

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import Dataset

from lit_vit.errors import ConfigError


@runtime_checkable
class ClassificationData(Protocol):
    """What ImageClassifier reads at setup: the classes, and the image size and channels its backbone must match."""

    img_size: tuple[int, int]

    @property
    def num_classes(self) -> int: ...

    @property
    def class_names(self) -> list[str]: ...

    @property
    def in_chans(self) -> int: ...


@runtime_checkable
class FewShotData(ClassificationData, Protocol):
    """What FewShotEval reads: the train / val splits built with the evaluation transform, and the loader options."""

    datasets: dict[str, Dataset]
    eval_batch_size: int
    num_workers: int

    def build_split(self, split: str, transform: Callable | None) -> Dataset:
        """The dataset of one split ('train', 'val' or 'test'), its `targets` the class indices."""
        ...

    def transforms(self, train: bool) -> Callable:
        """The training (augmenting) or evaluation transform of an image."""
        ...


def protocol_members(protocol: type) -> list[str]:
    """The attribute and method names a Protocol declares (its own and its Protocol bases'), in declaration order."""
    names: dict[str, None] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        names.update(dict.fromkeys(getattr(cls, "__annotations__", {})))
        names.update(dict.fromkeys(n for n in vars(cls) if not n.startswith("_")))
    return list(names)


def missing_members(obj: Any, protocol: type) -> list[str]:
    """The members of `protocol` that `obj` lacks, looked up without running properties (which may read data)."""
    own = getattr(obj, "__dict__", {})
    return [n for n in protocol_members(protocol) if n not in own and not hasattr(type(obj), n)]


def require(datamodule: Any, protocol: type, user: str) -> None:
    """ConfigError naming the DataModule class and every member of `protocol` it lacks, for `user` (who reads it)."""
    missing = missing_members(datamodule, protocol)
    if missing:
        raise ConfigError(
            f"{user} needs a lit_vit image DataModule or one with {', '.join(protocol_members(protocol))} "
            f"(lit_vit.data.{protocol.__name__}); {type(datamodule).__name__} has no {', '.join(missing)}: add them "
            "to it, or use a lit_vit.data image DataModule (e.g. ImageFolderDataModule)"
        )
