import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from lit_vit.data import CIFARDataModule, DigitsDataModule, ImageFolderDataModule
from lit_vit.data.sampling import SeededSampler
from lit_vit.errors import ConfigError


def test_digits_split_is_fixed_stratified_and_disjoint():
    a, b = DigitsDataModule().arrays(), DigitsDataModule(seed=7).arrays()
    sizes = {k: len(v[1]) for k, v in a.items()}
    assert sum(sizes.values()) == 1797
    assert abs(sizes["val"] - 270) <= 5 and abs(sizes["test"] - 270) <= 5
    for split in a:  # the split does not depend on the run seed
        assert np.array_equal(a[split][0], b[split][0])
    for split in ("val", "test"):  # every class is present in the held-out splits
        assert set(a[split][1].tolist()) == set(range(10))
    flat = {k: {im.tobytes() for im in v[0]} for k, v in a.items()}
    assert len(flat["train"] & flat["test"]) < 5  # (a few digits are pixel-identical duplicates in the source)


def test_digits_datamodule_describes_itself():
    dm = DigitsDataModule()
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert (dm.num_classes, dm.class_names[3], dm.in_chans) == (10, "3", 1)
    assert x.shape == (32, 1, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert abs(x.mean().item()) < 0.5  # normalised with the training set's statistics


def test_augmentation_repeats_for_a_seed_and_differs_between_epochs():
    def first_batch(seed, epoch):
        dm = DigitsDataModule(seed=seed)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[0]

    assert torch.equal(first_batch(0, 0), first_batch(0, 0))
    assert not torch.equal(first_batch(0, 0), first_batch(0, 1))
    assert not torch.equal(first_batch(0, 0), first_batch(1, 0))


@pytest.mark.slow
def test_augmentation_does_not_depend_on_the_number_of_workers():
    def batches(workers):
        dm = DigitsDataModule(num_workers=workers, persistent_workers=False, batch_size=64)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(3)
        return [x for x, _ in loader][:4]

    for a, b in zip(batches(0), batches(2)):
        assert torch.equal(a, b)


def test_sampler_skip_resumes_inside_the_same_epoch_order():
    data = list(range(20))
    full = SeededSampler(data, shuffle=True, seed=3)
    full.set_epoch(2)
    order = list(full)
    resumed = SeededSampler(data, shuffle=True, seed=3)
    resumed.set_epoch(2)
    resumed.skip_once(8)
    assert list(resumed) == order[8:]
    assert list(resumed) == order  # the skip applies once


def write_cifar(root, name="cifar10", n_train=40, n_test=20):
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, train_files, test_files, meta = (
            "cifar-10-batches-py",
            [f"data_batch_{i}" for i in range(1, 6)],
            ["test_batch"],
            ("batches.meta", "label_names", [f"class{i}" for i in range(10)]),
        )
        label_key, k = "labels", 10
    else:
        folder, train_files, test_files = "cifar-100-python", ["train"], ["test"]
        meta, label_key, k = ("meta", "fine_label_names", [f"fine{i}" for i in range(100)]), "fine_labels", 100
    d = root / folder
    d.mkdir(parents=True)
    for files, n in ((train_files, n_train), (test_files, n_test)):
        for f in files:
            batch = {
                "batch_label": f,
                label_key: rng.integers(0, k, n).tolist(),
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                "filenames": [f"img{i}.png" for i in range(n)],
            }
            with open(d / f, "wb") as fh:
                pickle.dump(batch, fh, protocol=2)
    with open(d / meta[0], "wb") as fh:
        pickle.dump({meta[1]: meta[2]}, fh, protocol=2)
    return d


@pytest.mark.parametrize("name, n_classes, n_train_files", [("cifar10", 10, 5), ("cifar100", 100, 1)])
def test_cifar_reads_torchvision_python_batches(tmp_path, name, n_classes, n_train_files):
    folder = write_cifar(tmp_path, name)
    dm = CIFARDataModule(name=name, root=str(tmp_path), val_size=10, download=False, batch_size=4, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    assert dm.num_classes == n_classes
    assert len(dm.datasets["train"]) + len(dm.datasets["val"]) == 40 * n_train_files
    assert len(dm.datasets["val"]) == 10 and len(dm.datasets["test"]) == 20
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 32, 32)
    # the pixels are CIFAR's row-major channel planes: image 0 of the test set, channel 0, is data[0, :1024]
    raw = pickle.load(open(folder / ("test_batch" if name == "cifar10" else "test"), "rb"))["data"][0]
    assert np.array_equal(dm.datasets["test"].images[0][..., 0].ravel(), raw[:1024])


def test_cifar_missing_files_name_the_file_and_where_to_put_it(tmp_path):
    dm = CIFARDataModule(root=str(tmp_path), download=False)
    with pytest.raises(ConfigError, match=r"missing data_batch_1.*cifar-10-python\.tar\.gz"):
        dm.setup("fit")


def test_cifar_refuses_pickles_that_run_code(tmp_path):
    folder = write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": Evil()}, fh)
    dm = CIFARDataModule(root=str(tmp_path), download=False, val_size=10)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        dm.setup("test")


def write_image_folder(root, classes=("cat", "dog", "emu"), per_class=3, splits=("train", "val"), size=(20, 28)):
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(per_class):
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_tree(tmp_path):
    write_image_folder(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=16, batch_size=4, num_workers=0)
    dm.setup("fit")
    dm.setup("test")  # no test/ folder: test uses val/
    assert dm.class_names == ["cat", "dog", "emu"]
    assert len(dm.datasets["train"]) == 9 and len(dm.datasets["test"]) == 9
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 16, 16)
    assert dm.datasets["val"].targets.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_image_folder_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=r"does not exist; expected .*/train/<class>/<image>"):
        _ = ImageFolderDataModule(root=str(tmp_path / "nope")).class_names


def test_image_folder_grey_channels(tmp_path):
    write_image_folder(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=8, channels=1, batch_size=2, num_workers=0)
    dm.setup("validate")
    assert next(iter(dm.val_dataloader()))[0].shape == (2, 1, 8, 8)


def test_unknown_augment_is_refused_before_reading_data():
    with pytest.raises(ConfigError, match="unknown augment 'autoaugment'.*rrc, pad_crop, none"):
        DigitsDataModule(augment="autoaugment")
