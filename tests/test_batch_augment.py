"""The batch augmentation path (lit_vit.data.batch_augment): the same augmentation as the per-sample albumentations
path in distribution, exact mid-epoch resume, the automatic choice; ImageFolder's normalize and cache options."""

import json

import albumentations as A
import numpy as np
import pytest
import torch
from conftest import TINY_VIT, tiny_fit_args
from PIL import Image

from lit_vit.cli import main
from lit_vit.data import DigitsDataModule, ImageDataModule, ImageFolderDataModule
from lit_vit.data.augment import AugmentPolicy
from lit_vit.data.batch_augment import RRC_RATIO, resized_crops, rrc_boxes
from lit_vit.data.datasets import ArrayDataset
from lit_vit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

# chi-square of 17 degrees of freedom (18 cells) at p = 0.001; the draws are seeded, so a pass is not luck
CHI2_17 = 40.79
N = 1800  # images per path: 100 expected per (offset, flip) cell


def position_image(size: int = 16) -> np.ndarray:
    """Channel 0 holds row + 1, channel 1 column + 1: every pixel names its source position (0 = padding)."""
    rows, cols = np.meshgrid(np.arange(size) + 1, np.arange(size) + 1, indexing="ij")
    return np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.uint8)


class OneImage(ImageDataModule):
    """N copies of the position image, normalised to identity (mean 0, std 1/255): batches hold the pixel values."""

    def __init__(self, **kwargs) -> None:
        ident = dict(mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3, num_workers=0)
        super().__init__(root="", img_size=16, augment="pad_crop", pad=1, hflip=True, batch_size=60, **ident, **kwargs)

    @property
    def class_names(self) -> list[str]:
        return ["one"]

    def build_split(self, split: str, transform) -> ArrayDataset:
        return ArrayDataset(np.stack([position_image()] * N), np.zeros(N, np.int64), transform)


def offsets_and_flips(batches) -> np.ndarray:
    """(oy, ox, flip) of every augmented position image (crop offsets in the padded image, pad 1)."""
    x = torch.cat([b for b, _ in batches]).round().long()
    rows, cols = x[:, 0], x[:, 1]
    flip = cols[:, 1, 2] < cols[:, 1, 1]
    oy = rows[:, 1, 1] - 1
    ox = torch.where(flip, cols[:, 1, -2], cols[:, 1, 1]) - 1
    return torch.stack([oy, ox, flip.long()], dim=1).numpy()


def cell_counts(params: np.ndarray) -> np.ndarray:
    return np.bincount(params[:, 0] * 6 + params[:, 1] * 2 + params[:, 2], minlength=18)


def test_batch_and_sample_paths_draw_the_same_crop_offsets_and_flips():
    counts = {}
    for path in ("batch", "sample"):
        dm = OneImage(augment_on=path)
        dm.setup("fit")
        assert dm.augment_path()[0] == path
        params = offsets_and_flips(list(dm.train_dataloader()))
        assert len(params) == N and set(params[:, 0]) <= {0, 1, 2} and set(params[:, 1]) <= {0, 1, 2}
        counts[path] = cell_counts(params)
    for path, c in counts.items():  # each uniform over the 3 x 3 offsets and the 2 flips
        expected = N / 18
        assert ((c - expected) ** 2 / expected).sum() < CHI2_17, (path, c)
    a, b = counts["batch"], counts["sample"]  # and the two alike (two-sample chi-square, equal totals)
    assert ((a - b) ** 2 / np.maximum(a + b, 1)).sum() < CHI2_17, (a, b)


def test_the_offset_check_fails_for_a_biased_crop():
    """The statistic above can fail: offsets 0..1 only (a crop that never reaches the last position) are refused."""
    rng = np.random.default_rng(0)
    biased = np.stack([rng.integers(0, 2, N), rng.integers(0, 3, N), rng.integers(0, 2, N)], axis=1)
    c = cell_counts(biased)
    assert ((c - N / 18) ** 2 / (N / 18)).sum() > CHI2_17


def albumentations_boxes(shape: tuple[int, int], scale: tuple[float, float], n: int) -> np.ndarray:
    crop = A.RandomResizedCrop(size=(8, 8), scale=scale, ratio=RRC_RATIO)
    out = []
    for i in range(n):
        crop.set_random_seed(i)
        x0, y0, x1, y1 = crop.get_params_dependent_on_data({"shape": shape}, {})["crop_coords"]
        out.append((y0, x0, y1 - y0, x1 - x0))
    return np.array(out)


def histogram_chi2(a: np.ndarray, b: np.ndarray, bins: int) -> float:
    edges = np.quantile(np.concatenate([a, b]), np.linspace(0, 1, bins + 1))
    edges[-1] += 1e-9
    ca, cb = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
    return float(((ca - cb) ** 2 / np.maximum(ca + cb, 1)).sum())


@pytest.mark.parametrize("shape, scale", [((24, 40), (0.08, 1.0)), ((10, 40), (0.3, 0.4))], ids=["rrc", "fallback"])
def test_rrc_boxes_follow_albumentations_in_distribution(shape, scale):
    n = 2000
    ours = rrc_boxes(torch.tensor([shape] * n), scale, RRC_RATIO, torch.Generator().manual_seed(0)).numpy()
    theirs = albumentations_boxes(shape, scale, n)
    H, W = shape
    for boxes in (ours, theirs):  # inside the image
        assert (
            (boxes[:, :2] >= 0).all()
            and (boxes[:, 0] + boxes[:, 2] <= H).all()
            and (boxes[:, 1] + boxes[:, 3] <= W).all()
        )
    # height, width, area and the position of the box's centre: 8 quantile bins each, chi-square 7 dof at p=0.001
    centre_y, centre_x = (lambda b: b[:, 0] + b[:, 2] / 2), (lambda b: b[:, 1] + b[:, 3] / 2)
    for name, f in {"h": lambda b: b[:, 2], "w": lambda b: b[:, 3], "area": lambda b: b[:, 2] * b[:, 3],
                    "cy": centre_y, "cx": centre_x}.items():  # fmt: skip
        a, b = f(ours).astype(float), f(theirs).astype(float)
        if np.unique(np.concatenate([a, b])).size > 8:
            assert histogram_chi2(a, b, 8) < 24.32, name
        else:  # few distinct values (the fallback): compare them one by one
            values = np.unique(np.concatenate([a, b]))
            ca, cb = (np.array([(x == v).sum() for v in values]) for x in (a, b))
            assert ((ca - cb) ** 2 / np.maximum(ca + cb, 1)).sum() < 24.32, name
    # 10 x 40 is wider than 4:3: when no attempt fits, the centred 10 x round(10 * 4 / 3) box
    fallback = np.array([0, (40 - 13) // 2, 10, 13])
    share = [np.all(boxes == fallback, axis=1).mean() for boxes in (ours, theirs)]
    assert abs(share[0] - share[1]) < 0.05
    if shape == (10, 40):
        assert 0.1 < share[0] < 0.9  # both kinds of box are drawn


def test_a_resized_crop_of_the_whole_image_is_the_image_and_a_flip_mirrors_it():
    image = torch.from_numpy(position_image()).permute(2, 0, 1)[None].repeat(2, 1, 1, 1)
    box = torch.tensor([[0, 0, 16, 16]] * 2)
    out = resized_crops(image, box, torch.tensor([False, True]), (16, 16))
    assert torch.equal(out[0], image[0]) and torch.equal(out[1], image[1].flip(-1))
    half = resized_crops(image[:1], torch.tensor([[4, 2, 8, 8]]), torch.tensor([False]), (8, 8))
    assert torch.equal(half[0], image[0, :, 4:12, 2:10])  # a box at the output size is a plain crop


def test_the_automatic_choice_is_batch_for_digits_and_sample_for_randaugment_or_files(tmp_path):
    assert DigitsDataModule().augment_path()[0] == "batch"
    assert DigitsDataModule(augment_policy=AugmentPolicy()).augment_path()[0] == "sample"
    assert ImageFolderDataModule(root=str(tmp_path)).augment_path()[0] == "sample"
    assert ImageFolderDataModule(root=str(tmp_path), cache="memory").augment_path()[0] == "batch"
    assert DigitsDataModule(augment_on="sample").augment_path()[0] == "sample"


def test_batch_path_resumed_mid_epoch_equals_the_uninterrupted_run_bit_for_bit(tmp_path, capfd):
    record = {"class_path": "_cli_callbacks.RecordBatches", "init_args": {"path": str(tmp_path / "ref.jsonl")}}
    common = dict(max_epochs=1, limit_batches=8)
    opts = ["--data.augment_on=batch", "--checkpoint_every_n_steps=3"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    main(tiny_fit_args(ref, *opts, "--trainer.callbacks=" + json.dumps([record]), **common))
    assert "data: batch augmentation (pad_crop" in capfd.readouterr().err
    crash = {"class_path": "_cli_callbacks.CrashAtStep", "init_args": {"step": 5}}
    record["init_args"]["path"] = str(tmp_path / "run.jsonl")
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(tiny_fit_args(run, *opts, "--trainer.callbacks=" + json.dumps([record, crash]), **common))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (0, 3)  # the periodic checkpoint, mid-epoch
    main(tiny_fit_args(run, *opts, "--trainer.callbacks=" + json.dumps([record]), "--ckpt_path=last", **common))
    ref_batches = [json.loads(line) for line in open(tmp_path / "ref.jsonl")]
    run_batches = [json.loads(line) for line in open(tmp_path / "run.jsonl")]
    assert [b["step"] for b in run_batches[6:]] == list(range(3, 8))  # 5 steps and the crashed one, then resumed
    assert run_batches[6:] == ref_batches[3:]  # the same samples with the same augmentation, in the same order
    a = torch.load(ref / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- ImageFolder: normalize dataset, cache memory ---------------------------------------------------------------


def write_tree(root, value_offset: int = 0) -> None:
    """2 classes x 4 train / 2 val grey-ish RGB images of different sizes, seeded."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = 16 + 2 * i, 20 - i
                arr = np.clip(rng.integers(0, 200, (h, w, 3)) + value_offset, 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")


def numpy_stats(root) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate(
        [np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3) / 255.0 for p in sorted(root.glob("train/*/*.png"))]
    )
    return pixels.mean(axis=0), pixels.std(axis=0)


def test_normalize_dataset_equals_numpy_and_predict_reuses_the_checkpoints_values(tmp_path):
    import lightning as L

    from lit_vit.models import VisionTransformer
    from lit_vit.modules import ImageClassifier

    root, run = tmp_path / "tree", tmp_path / "run"
    write_tree(root)
    mean, std = numpy_stats(root)
    data = ["--data=lit_vit.data.ImageFolderDataModule", f"--data.root={root}", "--data.img_size=16"]
    data += ["--data.batch_size=4", "--data.num_workers=0", "--data.normalize=dataset", "--data.cache=memory"]
    args = [a for a in tiny_fit_args(run, limit_batches=2) if not a.startswith("--data")]
    args = [a.replace('"in_chans": 1', '"in_chans": 3') for a in args]
    main([*args, *data])
    saved = json.loads((run / "normalize.json").read_text())
    np.testing.assert_allclose(saved["mean"], mean, atol=1e-9)
    np.testing.assert_allclose(saved["std"], std, atol=1e-9)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["ImageFolderDataModule"]["normalize"] == {"mean": saved["mean"], "std": saved["std"]}

    write_tree(root, value_offset=50)  # the tree changes: its statistics are not the checkpoint's any more
    assert not np.allclose(numpy_stats(root)[0], mean, atol=0.05)
    dm = ImageFolderDataModule(root=str(root), img_size=16, normalize="dataset", predict_path=str(root / "val"))
    backbone = VisionTransformer(**(TINY_VIT["init_args"] | {"in_chans": 3}), num_classes=2)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(ImageClassifier(backbone), datamodule=dm, ckpt_path=run / "checkpoints" / "last.ckpt")
    np.testing.assert_allclose(dm.dataset_stats[0], mean, atol=1e-9)
    normalize = [t for t in dm.datasets["predict"].transform if isinstance(t, A.Normalize)][0]
    np.testing.assert_allclose(np.ravel(normalize.mean), mean, atol=1e-9)
    assert not (run / "normalize.json").read_text() != json.dumps(saved, indent=1) + "\n"  # not rewritten


def test_cache_memory_decodes_once_and_refuses_a_tree_above_the_bound(tmp_path):
    write_tree(tmp_path)
    dm = ImageFolderDataModule(root=str(tmp_path), img_size=16, cache="memory", batch_size=4, num_workers=0)
    dm.setup("fit")
    train = dm.datasets["train"]
    assert isinstance(train, ArrayDataset) and len(train.images) == 8 and train.images[1].shape == (18, 19, 3)
    x, _ = next(iter(dm.train_dataloader()))  # rrc from images of different sizes on one canvas
    assert x.shape == (4, 3, 16, 16) and dm.batched
    again = dm.build_split("train", dm.transforms(train=False))  # as FewShotEval reads it: no second decoding
    assert again.images is train.images and dm.transforms(train=False) is not None
    decoded = sum(im.nbytes for im in train.images)
    small = ImageFolderDataModule(root=str(tmp_path), cache="memory", cache_max_gb=(decoded - 1) / 2**30)
    with pytest.raises(
        ConfigError, match=r"cache memory: the train split \(8 images .* set --data.init_args.cache_max_gb"
    ):
        small.setup("fit")


# every bad value names itself, the allowed values and the option to set (constructor checks, before any data is read)
BAD_VALUES = {
    "augment_on": (dict(augment_on="gpu"), "augment_on is 'gpu' but must be one of auto, batch, sample"),
    "device_cache": (dict(device_cache="off"), "device_cache is 'off' but must be one of auto, device, cpu"),
    "batch_with_randaugment": (
        dict(augment_on="batch", augment_policy=AugmentPolicy()),
        "augment_on batch cannot apply augment_policy",
    ),
    "batch_without_cache": (dict(augment_on="batch"), "augment_on batch needs the images in memory"),
    "cache": (dict(cache="disk"), "cache is 'disk' but must be one of off, memory"),
    "cache_max_gb": (dict(cache_max_gb=0), "cache_max_gb must be > 0"),
    "normalize_word": (dict(normalize="imagenett"), "normalize is 'imagenett' but must be imagenet, dataset"),
    "normalize_imagenet_grey": (dict(normalize="imagenet", channels=1), "normalize imagenet has 3 channels"),
    "normalize_length": (dict(normalize=[0.5, 0.5]), "must be 6 numbers in [0, 1] for 3 channel(s)"),
    "normalize_and_mean": (dict(normalize="dataset", mean=(0.5, 0.5, 0.5)), "give one"),
}


@pytest.mark.parametrize("name", BAD_VALUES)
def test_a_bad_data_option_is_refused_naming_the_value_and_the_fix(name):
    kwargs, expect = BAD_VALUES[name]
    with pytest.raises(ConfigError) as err:
        ImageFolderDataModule(root="nowhere", **kwargs)
    assert expect in str(err.value) and "--data.init_args." in str(err.value) and "\n" not in str(err.value)


# the same through the command line: one `error:` line, no traceback, nothing trained (a constructor check, a list
# value, and the cache bound, which setup checks)
CLI_BAD = {
    "augment_on": (["--data.augment_on=gpu"], "augment_on is 'gpu' but must be one of auto, batch, sample"),
    "normalize_length": (["--data.normalize=[0.5, 0.5]"], "must be 6 numbers in [0, 1] for 3 channel(s)"),
    "cache_too_large": (["--data.cache=memory", "--data.cache_max_gb=1e-6"], "set --data.init_args.cache_max_gb"),
}


@pytest.mark.parametrize("name", CLI_BAD)
def test_bad_data_options_stop_with_one_error_line(tmp_path, name, capfd):
    run = tmp_path / "run"
    extra, expect = CLI_BAD[name]
    write_tree(tmp_path / "tree")
    args = [a for a in tiny_fit_args(run) if not a.startswith("--data")]
    argv = [*args, "--data=lit_vit.data.ImageFolderDataModule", f"--data.root={tmp_path / 'tree'}", *extra]
    capfd.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert stop.value.code == 2 and "Traceback" not in err and len(lines) == 1, err[-2000:]
    assert expect in lines[0], lines[0]
    assert not (run / "checkpoints").exists()
