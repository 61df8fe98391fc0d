"""The battery of bad inputs from the command line: every case must end with exit code 2, exactly one one-line
`error:` message that names the problem, no Python traceback, and every file that existed before left untouched (same
bytes, same modification time).

The cases run in this process through `lit_vit.cli.main(argv)` with the output captured at the file-descriptor level
(a subprocess each cost an import of torch and Lightning: a third of the suite); two of them, one model error and one
data error, also run as true `python -m lit_vit` subprocesses (slow), so the exit status and stderr a shell sees stay
covered. The runs the cases need (a finished ViT run, a T2T-ViT run, image folders, damaged checkpoint files) are made
once per module.
"""

import argparse
import csv
import hashlib
import os
import pickle
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_VIT, run_main, tiny_fit_args
from PIL import Image

from lit_vit import run_folder
from lit_vit.cli import main

T2T = {
    "class_path": "lit_vit.models.T2TViT",
    "init_args": {"img_size": 32, "in_chans": 1, "tokens_type": "performer", "embed_dim": 32, "depth": 1},
}
T2T["init_args"] |= {"num_heads": 2, "mlp_ratio": 2.0, "token_dim": 16}


def t2t_args(run_dir, *extra):
    args = [a for a in tiny_fit_args(run_dir) if not a.startswith("--model.backbone=")]
    return [*args, f"--model.backbone={T2T}".replace("'", '"'), "--data.img_size=32", *extra]


def folder_args(run_dir, root, *extra, batches=3):
    """A fit of the tiny ViT on an ImageFolder tree of 16x16 grey images."""
    args = [a for a in tiny_fit_args(run_dir, limit_batches=batches) if not a.startswith("--data")]
    data = ["--data=lit_vit.data.ImageFolderDataModule", f"--data.root={root}", "--data.img_size=16"]
    data += ["--data.channels=1", "--data.batch_size=2", "--data.num_workers=0", "--data.augment=pad_crop"]
    return [*args, *data, *extra]


def write_folder(root: Path, classes=("a", "b"), per_class=6, bad: str | None = None, empty: str | None = None):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            if split == "train" and c == empty:
                continue
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    if bad:
        (root / "train" / classes[0] / bad).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def fingerprint(paths: list[Path]) -> dict[str, tuple[str, int]]:
    out = {}
    for p in paths:
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            out[str(f)] = (hashlib.sha256(f.read_bytes()).hexdigest(), f.stat().st_mtime_ns)
    return out


@dataclass
class Case:
    argv: list[str]
    expect: list[str]  # substrings of the error line
    watch: list[Path] = field(default_factory=list)  # files / folders that must stay as they are
    absent: list[Path] = field(default_factory=list)  # paths that must not be created


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Runs and files for the cases, made in this process (fast) before the subprocesses start."""
    root = tmp_path_factory.mktemp("bad_inputs")
    vit = root / "vit"
    main(tiny_fit_args(vit, max_epochs=2))
    t2t = root / "t2t"
    main(t2t_args(t2t))
    # a run folder whose checkpoints were deleted: metrics.csv and config.yaml remain
    nockpt = root / "nockpt"
    shutil.copytree(vit, nockpt)
    shutil.rmtree(nockpt / "checkpoints")
    # a run whose last.ckpt was cut short (best.ckpt intact)
    trunc = root / "trunc"
    shutil.copytree(vit, trunc)
    data = (trunc / "checkpoints" / "last.ckpt").read_bytes()
    (trunc / "checkpoints" / "last.ckpt").write_bytes(data[: len(data) // 2])
    files = root / "files"
    files.mkdir()
    (files / "empty.ckpt").write_bytes(b"")
    torch.save({"state_dict": {}, "args": argparse.Namespace(lr=1)}, files / "objects.ckpt")
    with open(files / "plain.pkl", "wb") as f:
        pickle.dump({"state_dict": {}}, f)
    torch.save({"pos_embed": torch.zeros(1, 17, 32)}, files / "weights.pth")
    write_folder(root / "badimg", per_class=12, bad="zz_broken.png")
    write_folder(root / "emptycls", classes=("a", "b", "c"), empty="c")
    predict_dir = root / "predict"
    predict_dir.mkdir()
    for i in range(3):
        Image.fromarray(np.full((16, 16), 40 * i, np.uint8)).save(predict_dir / f"ok{i}.png")
    (predict_dir / "broken.png").write_bytes(b"not a png")
    return root


def cases(w: Path) -> dict[str, Case]:
    vit, t2t = w / "vit", w / "t2t"
    run_files = [vit]
    bb = "--model.backbone.init_args"
    return {
        # 1. resume never replaces the user's model config by the checkpoint's
        "resume_other_width": Case(
            tiny_fit_args(vit, "--ckpt_path=last", f"{bb}.embed_dim=64"),
            ["model.init_args.backbone.init_args.embed_dim: 64 here, 32 in the checkpoint"],
            run_files,
        ),
        "resume_other_lr": Case(
            tiny_fit_args(vit, "--ckpt_path=last", "--model.lr=0.05"), ["model.init_args.lr: 0.05 here"], run_files
        ),
        "resume_other_pos_embed": Case(
            tiny_fit_args(vit, "--ckpt_path=last", f"{bb}.pos_embed=relative"),
            ["pos_embed: 'relative' here"],
            run_files,
        ),
        "t2t_checkpoint_into_a_vit_config": Case(
            tiny_fit_args(w / "new_from_t2t", f"--ckpt_path={t2t / 'checkpoints' / 'last.ckpt'}"),
            ["backbone.class_path: 'lit_vit.models.VisionTransformer' here, 'lit_vit.models.T2TViT'"],
            [t2t],
            [w / "new_from_t2t"],
        ),
        # 2. evaluation without a checkpoint never evaluates random weights
        "test_without_any_checkpoint": Case(
            ["test", f"--config={vit / 'config.yaml'}", f"--trainer.default_root_dir={w / 'nothing'}"],
            ["test needs trained weights", "best.ckpt does not exist"],
            run_files,
            [w / "nothing"],
        ),
        # 3. a fit writes only into an empty folder or the run it resumes
        "resume_another_run_into_a_finished_run": Case(
            tiny_fit_args(vit, f"--ckpt_path={t2t / 'checkpoints' / 'last.ckpt'}"),
            ["belongs to another run", "--trainer.default_root_dir <empty dir>"],
            [vit, t2t],
        ),
        "new_fit_into_a_folder_without_checkpoints": Case(
            tiny_fit_args(w / "nockpt"), ["is not empty", "config.yaml"], [w / "nockpt"]
        ),
        "new_fit_into_an_existing_run": Case(
            tiny_fit_args(vit), ["already holds a run", "--ckpt_path last"], run_files
        ),
        # 4. zero is a value, never "unset"
        "depth_0": Case(
            tiny_fit_args(w / "d0", f"{bb}.depth=0"), ["depth must be a positive integer, got 0"], [], [w / "d0"]
        ),
        "embed_dim_0": Case(
            tiny_fit_args(w / "e0", f"{bb}.embed_dim=0"),
            ["embed_dim must be a positive integer, got 0"],
            [],
            [w / "e0"],
        ),
        # 5. damaged or foreign checkpoint files
        "truncated_last_ckpt": Case(
            tiny_fit_args(w / "trunc", "--ckpt_path=last"),
            ["not a readable checkpoint", "last.ckpt", "resume from", "best.ckpt"],
            [w / "trunc"],
        ),
        "empty_ckpt": Case(
            tiny_fit_args(w / "r_empty", f"--ckpt_path={w / 'files' / 'empty.ckpt'}"), ["is empty (0 bytes)"]
        ),
        "ckpt_with_python_objects": Case(
            tiny_fit_args(w / "r_obj", f"--ckpt_path={w / 'files' / 'objects.ckpt'}"),
            ["holds Python objects", "weights_only=True"],
        ),
        "plain_pickle_as_ckpt": Case(
            tiny_fit_args(w / "r_pkl", f"--ckpt_path={w / 'files' / 'plain.pkl'}"), ["not a readable checkpoint"]
        ),
        "weights_file_as_ckpt": Case(
            tiny_fit_args(w / "r_w", f"--ckpt_path={w / 'files' / 'weights.pth'}"),
            ["not a Lightning checkpoint", "--model.init_args.pretrained"],
        ),
        "ckpt_path_last_without_a_checkpoint": Case(
            tiny_fit_args(w / "r_none", "--ckpt_path=last"), ["--ckpt_path last: no checkpoint at"], [], [w / "r_none"]
        ),
        # 6. image folders
        "empty_class_folder": Case(
            folder_args(w / "r_emptycls", w / "emptycls"), ["hold no images: c"], [w / "emptycls"]
        ),
        # 7. numbers
        "max_epochs_minus_1": Case(
            tiny_fit_args(w / "r_inf", "--trainer.max_epochs=-1"),
            ["has no end", "--trainer.max_steps"],
            [],
            [w / "r_inf"],
        ),
        "max_epochs_0": Case(tiny_fit_args(w / "r_e0", "--trainer.max_epochs=0"), ["max_epochs must be 1 or more"]),
        "num_threads_minus_2": Case(
            tiny_fit_args(w / "r_thr", "--num_threads=-2"), ["--num_threads must be 1 or more, got -2"]
        ),
        "negative_lr_without_equals": Case(
            [*tiny_fit_args(w / "r_lr1"), "--model.lr", "-1e-3"], ["write --model.lr=-1e-3"], [], [w / "r_lr1"]
        ),
        "negative_lr": Case(tiny_fit_args(w / "r_lr2", "--model.lr=-1e-3"), ["lr must be a learning rate >= 0"]),
        "warmup_given_twice": Case(
            tiny_fit_args(w / "r_wu", "--model.warmup_steps=5", "--model.warmup_epochs=1"), ["give the warm-up once"]
        ),
        # checks that were there before this module
        "patch_size_not_dividing": Case(
            tiny_fit_args(w / "r_p5", f"{bb}.patch_size=5"), ["16x16 is not divisible by the patch size 5x5"]
        ),
        "unknown_variant": Case(tiny_fit_args(w / "r_xxl", f"{bb}.variant=XXL"), ["unknown ViT variant 'XXL'"]),
        "channels_mismatch": Case(tiny_fit_args(w / "r_ch", f"{bb}.in_chans=3"), ["in_chans: 1"]),
        "bad_crop_pct": Case(
            folder_args(w / "r_crop", w / "emptycls", "--data.crop_pct=1.5"), ["crop_pct must be in (0, 1], got 1.5"]
        ),
    }


def run_cli(argv: list[str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"} | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "lit_vit", *argv], capture_output=True, text=True, env=env, timeout=300, cwd=os.getcwd()
    )


CASE_NAMES = list(cases(Path("/w")))
# the cases that also run as a true `python -m lit_vit` subprocess: one model error, one data error
SUBPROCESS_CASES = ["embed_dim_0", "empty_class_folder"]


def check_outcome(case: Case, before: dict, code: int | None, err: str) -> None:
    assert code == 2, f"exit {code}\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err[-3000:]
    for text in case.expect:
        assert text in lines[0], lines[0]
    assert fingerprint(case.watch) == before  # nothing that existed was rewritten
    for path in case.absent:
        assert not path.exists(), f"{path} was created"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_stops_with_one_clear_error_and_touches_nothing(world, name, capfd):
    """In this process: `main()` raises SystemExit(2) (an exception escaping it would be the traceback a shell sees)."""
    case = cases(world)[name]
    before = fingerprint(case.watch)
    check_outcome(case, before, *run_main(case.argv, capfd))
    assert not run_folder._held  # main() released the run-folder claims of its command


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_as_a_subprocess(world, name):
    case = cases(world)[name]
    before = fingerprint(case.watch)
    proc = run_cli(case.argv)
    check_outcome(case, before, proc.returncode, proc.stderr)


# --- the cases that must do what was asked (or stop cleanly after saving what they did) ------------------------------


def test_a_corrupt_training_image_is_named_after_last_ckpt_is_saved(world, tmp_path, capfd):
    run = tmp_path / "run"
    code, err = run_main(folder_args(run, world / "badimg", "--checkpoint_every_n_steps=1000", batches=20), capfd)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "cannot read image" in line and "zz_broken.png" in line and "on_bad_image skip" in line
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] > 0  # the steps before the bad batch are kept (the periodic save would be at 1000)
    # opt-in: skip it with a warning, and the fit finishes
    code, err = run_main(
        folder_args(tmp_path / "skip", world / "badimg", "--data.on_bad_image=skip", batches=20), capfd
    )
    assert code == 0, err[-3000:]
    assert "warning: skipping unreadable image" in err and "zz_broken.png" in err


def test_predict_writes_every_good_row_and_reports_the_bad_file(world, tmp_path, capfd):
    out = tmp_path / "pred.csv"
    argv = ["predict", f"--config={world / 'vit' / 'config.yaml'}", "--ckpt_path=best"]
    code, err = run_main([*argv, f"--data.predict_path={world / 'predict'}", f"--predict_output={out}"], capfd)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert "1 of 4 images could not be read" in line and "broken.png" in line
    rows = list(csv.DictReader(open(out)))
    assert sorted(os.path.basename(r["path"]) for r in rows) == ["ok0.png", "ok1.png", "ok2.png"]


def test_evaluation_defaults_to_best_ckpt_and_never_touches_the_training_metrics(world, capsys):
    run = world / "vit"
    before = fingerprint([run / "metrics.csv", run / "config.yaml", run / "checkpoints"])
    main(["test", f"--config={run / 'config.yaml'}"])
    assert "no --ckpt_path given, using" in capsys.readouterr().err
    main(["validate", f"--config={run / 'config.yaml'}", "--ckpt_path=best"])
    assert fingerprint([run / "metrics.csv", run / "config.yaml", run / "checkpoints"]) == before
    tests = sorted((run / "evaluations").glob("test-best-*/metrics.csv"))
    vals = sorted((run / "evaluations").glob("validate-best-*/metrics.csv"))
    assert len(tests) == 1 and len(vals) == 1
    # validate on best.ckpt gives the score the checkpoint was chosen by: the trained weights, not random ones
    best = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    # test on best.ckpt scores the whole test split (269 digits) with those weights: counted here without Lightning
    from lit_vit.data import DigitsDataModule
    from lit_vit.models import VisionTransformer
    from lit_vit.modules import ImageClassifier

    model = ImageClassifier(VisionTransformer(**TINY_VIT["init_args"], num_classes=10)).eval()
    model.load_state_dict(best["state_dict"])
    data = DigitsDataModule(batch_size=64)
    data.setup("test")
    with torch.no_grad():
        hits = [(model(x).argmax(-1) == y) for x, y in data.test_dataloader()]
    assert sum(len(h) for h in hits) == 269
    expected = sum(int(h.sum()) for h in hits) / 269
    assert float(next(csv.DictReader(open(tests[0])))["test/acc1"]) == pytest.approx(expected, abs=1e-6)
    (score,) = [v["best_model_score"] for v in best["callbacks"].values() if "best_model_score" in v]
    assert float(next(csv.DictReader(open(vals[0])))["val/acc1"]) == pytest.approx(float(score))


def test_a_fit_stopped_at_setup_can_be_rerun_in_its_folder(tmp_path, capsys):
    """The data / model checks at setup run after config.yaml is written: nothing was trained, so a rerun is allowed."""
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        main(tiny_fit_args(run, "--model.backbone.init_args.in_chans=3"))
    assert "in_chans: 1" in capsys.readouterr().err and sorted(p.name for p in run.iterdir()) == ["config.yaml"]
    main(tiny_fit_args(run))
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_resume_may_change_the_training_length(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world / "vit", run)
    main(tiny_fit_args(run, "--ckpt_path=last", max_epochs=3))
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 3


@pytest.mark.slow
def test_the_eval_resize_follows_the_training_augmentation(tmp_path):
    from lit_vit.data import CIFARDataModule, ImageFolderDataModule

    assert ImageFolderDataModule(augment="rrc").crop_pct == 0.875
    assert ImageFolderDataModule(augment="pad_crop").crop_pct == 1.0  # pad_crop never rescales: no eval crop
    assert ImageFolderDataModule(augment="none").crop_pct == 1.0
    assert ImageFolderDataModule(augment="pad_crop", crop_pct=0.9).crop_pct == 0.9  # explicit values are kept
    assert CIFARDataModule(root=str(tmp_path), download=False).crop_pct == 1.0


def test_tiny_vit_config_is_the_one_the_cases_use():
    assert TINY_VIT["init_args"]["embed_dim"] == 32  # "64 here, 32 in the checkpoint" above depends on it


def test_only_negative_numbers_with_an_exponent_need_an_equals_sign():
    from lit_vit.cli import check_negative_numbers
    from lit_vit.errors import ConfigError

    for argv in (["--model.init_args.lr", "-0.5"], ["--trainer.max_epochs", "-1"], ["--x", "-.5"]):
        check_negative_numbers(argv)  # argparse reads these as values: no error
    for value in ("-1e-3", "-2.5E+2"):
        with pytest.raises(ConfigError, match=re.escape(f"write --model.init_args.lr={value}")):
            check_negative_numbers(["--model.init_args.lr", value])
