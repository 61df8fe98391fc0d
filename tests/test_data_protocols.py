"""The written contracts between DataModules and their readers (lit_vit.data.ClassificationData / FewShotData): every
lit_vit image DataModule provides them; one without them is refused at setup with the missing names."""

from types import SimpleNamespace

import lightning as L
import pytest

from lit_vit.callbacks import FewShotEval
from lit_vit.data import ClassificationData, DigitsDataModule, FewShotData, ImageFolderDataModule
from lit_vit.data.protocols import missing_members, protocol_members
from lit_vit.errors import ConfigError
from lit_vit.models import VisionTransformer
from lit_vit.modules import ImageClassifier


def test_the_protocols_declare_what_the_classifier_and_fewshot_read():
    assert protocol_members(ClassificationData) == ["img_size", "num_classes", "class_names", "in_chans"]
    assert protocol_members(FewShotData) == [
        *protocol_members(ClassificationData), "datasets", "eval_batch_size", "num_workers", "build_split",
        "transforms",
    ]  # fmt: skip


@pytest.mark.parametrize("make", [lambda tmp: DigitsDataModule(), lambda tmp: ImageFolderDataModule(root=tmp)])
def test_lit_vit_image_datamodules_provide_both_protocols(make, tmp_path):
    assert missing_members(make(tmp_path), FewShotData) == []


def test_isinstance_works_on_a_datamodule_whose_data_is_there():
    # Python 3.11's runtime check reads every property (the image folder's class names need the folder): `require`
    # looks the names up without running them
    dm = DigitsDataModule()
    assert isinstance(dm, ClassificationData) and isinstance(dm, FewShotData)
    assert not isinstance(NumbersOnly(), FewShotData)


class NumbersOnly(L.LightningDataModule):
    """Declares its classes but not the image size / channels the classifier checks the backbone against."""

    num_classes = 3
    class_names = ["a", "b", "c"]


def tiny_classifier(**kwargs) -> ImageClassifier:
    backbone = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    return ImageClassifier(backbone, **kwargs)


def test_the_classifier_refuses_a_datamodule_lacking_the_protocol_naming_class_and_missing_attributes():
    model = tiny_classifier()
    model.trainer = SimpleNamespace(datamodule=NumbersOnly())
    with pytest.raises(
        ConfigError, match=r"ImageClassifier needs .*ClassificationData\); NumbersOnly has no img_size, in_chans:"
    ):
        model.setup("fit")


def test_the_classifier_refuses_a_plain_datamodule_when_num_classes_is_not_given():
    model = tiny_classifier()
    model.trainer = SimpleNamespace(datamodule=L.LightningDataModule())
    with pytest.raises(ConfigError, match="LightningDataModule has no img_size, num_classes, class_names, in_chans:"):
        model.setup("fit")


def test_a_plain_datamodule_with_model_num_classes_is_accepted_unchecked():
    model = tiny_classifier(num_classes=2)
    model.trainer = SimpleNamespace(datamodule=L.LightningDataModule())
    model.setup("fit")
    assert model.hparams.num_classes == 2


def test_fewshot_refuses_a_datamodule_lacking_the_protocol_naming_class_and_missing_attributes():
    with pytest.raises(
        ConfigError,
        match=r"FewShotEval needs .*FewShotData\); NumbersOnly has no img_size, in_chans, datasets, eval_batch_size, "
        r"num_workers, build_split, transforms:",
    ):
        FewShotEval().check(NumbersOnly())
