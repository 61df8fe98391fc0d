import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import tiny_fit_args
from PIL import Image

from lit_vit.cli import main
from lit_vit.data import DigitsDataModule
from lit_vit.modules import ImageClassifier


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint, written by this test


def fail(capsys, args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short fit shared by the read-only tests below."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    main(tiny_fit_args(run_dir, max_epochs=2))
    return run_dir


def test_fit_writes_the_run_directory(trained):
    assert sorted(p.name for p in trained.iterdir()) == ["checkpoints", "config.yaml", "hparams.yaml", "metrics.csv"]
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    rows = read_metrics(trained)
    assert {r["epoch"] for r in rows if r.get("val/acc1")} == {"0", "1"}
    assert {"train/loss", "val/loss", "val/acc1", "val/acc5"} <= set(rows[0])
    last = ckpt(trained / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 8)  # saved at the end of training: 2 epochs done
    # one ModelCheckpoint state in the checkpoint: best.ckpt's (the periodic last.ckpt callback keeps none)
    (best_state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert best_state["monitor"] == "val/acc1" and best_state["best_model_path"].endswith("best.ckpt")


def test_a_checkpoint_of_an_earlier_lit_vit_resumes_with_its_best_score(tmp_path):
    """Earlier versions kept best.ckpt with a ModelCheckpoint subclass: its state is stored under that class's name."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_vit.callbacks import LastCheckpoint

    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/acc1", mode="max")
    old_key = "Atomic" + best.state_key
    state = {"monitor": "val/acc1", "best_model_score": torch.tensor(0.75), "best_model_path": str(tmp_path / "b"),
             "current_score": torch.tensor(0.5), "dirpath": best.dirpath, "best_k_models": {},
             "kth_best_model_path": "", "kth_value": torch.tensor(0.75), "last_model_path": ""}  # fmt: skip
    checkpoint = {"callbacks": {old_key: state, "EMA": {"latest_update_step": 3}}}
    LastCheckpoint(tmp_path).on_load_checkpoint(None, None, checkpoint)  # Lightning calls it before load_state_dict
    assert sorted(checkpoint["callbacks"]) == sorted([best.state_key, "EMA"])
    best.load_state_dict(checkpoint["callbacks"][best.state_key])
    assert float(best.best_model_score) == 0.75


def test_checkpoint_alone_rebuilds_the_trained_model(trained):
    model = ImageClassifier.load_from_checkpoint(trained / "checkpoints" / "best.ckpt", map_location="cpu").eval()
    assert model.hparams.num_classes == 10 and model.hparams.class_names == [str(i) for i in range(10)]
    state = ckpt(trained / "checkpoints" / "best.ckpt")["state_dict"]
    torch.testing.assert_close(model.state_dict()["backbone.head.weight"], state["backbone.head.weight"])
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)


def test_resume_continues_the_same_run_at_the_right_epoch_and_step(tmp_path):
    run_dir = tmp_path / "run"
    main(tiny_fit_args(run_dir, max_epochs=1))
    main(tiny_fit_args(run_dir, "--ckpt_path=last", max_epochs=3))
    last = ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (3, 12)
    rows = read_metrics(run_dir)
    assert [r["epoch"] for r in rows if r.get("val/acc1")] == ["0", "1", "2"]  # one file, appended, no duplicates
    assert [r["epoch"] for r in rows if r.get("train/acc1")] == ["0", "1", "2"]
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [1, 3, 5, 7, 9, 11]
    assert not any(p.name.startswith("version_") for p in run_dir.rglob("*"))


def callbacks_arg(record, crash=None):
    cbs = [{"class_path": "_cli_callbacks.RecordBatches", "init_args": {"path": str(record)}}]
    if crash is not None:
        cbs.append({"class_path": "_cli_callbacks.CrashAtStep", "init_args": {"step": crash}})
    return "--trainer.callbacks=" + json.dumps(cbs)


def test_a_run_killed_mid_epoch_resumes_exactly_where_it_stopped(tmp_path):
    common = dict(max_epochs=2, limit_batches=8)
    ref, run = tmp_path / "ref", tmp_path / "run"
    main(tiny_fit_args(ref, callbacks_arg(tmp_path / "ref.jsonl"), "--checkpoint_every_n_steps=3", **common))
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(tiny_fit_args(run, callbacks_arg(tmp_path / "run.jsonl", 13), "--checkpoint_every_n_steps=3", **common))
    interrupted = ckpt(run / "checkpoints" / "last.ckpt")
    assert (interrupted["epoch"], interrupted["global_step"]) == (1, 12)  # the periodic checkpoint, mid-epoch
    main(tiny_fit_args(run, callbacks_arg(tmp_path / "run.jsonl"), "--ckpt_path=last", **common))

    ref_batches = [json.loads(line) for line in open(tmp_path / "ref.jsonl")]
    run_batches = [json.loads(line) for line in open(tmp_path / "run.jsonl")]
    resumed = [b for b in run_batches[14:]]  # 13 steps before the crash + the batch it crashed on
    assert [b["step"] for b in resumed] == [12, 13, 14, 15]
    assert resumed == ref_batches[12:]  # the same samples with the same augmentation, in the same order
    a = ckpt(ref / "checkpoints" / "last.ckpt")["state_dict"]
    b = ckpt(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_new_fit_never_overwrites_an_existing_run(trained, capsys):
    before = (trained / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    err = fail(capsys, tiny_fit_args(trained))
    assert "already holds a run" in err and "--ckpt_path last" in err
    assert (trained / "checkpoints" / "last.ckpt").stat().st_mtime_ns == before


def test_ckpt_path_last_without_a_checkpoint_fails(tmp_path, capsys):
    err = fail(capsys, tiny_fit_args(tmp_path / "empty", "--ckpt_path=last"))
    assert "no checkpoint at" in err and "last.ckpt" in err
    assert not (tmp_path / "empty").exists()


def test_a_file_that_is_not_a_checkpoint_fails(tmp_path, capsys):
    bogus = tmp_path / "notes.ckpt"
    bogus.write_text("hello")
    err = fail(capsys, tiny_fit_args(tmp_path / "run", f"--ckpt_path={bogus}"))
    assert "is not a readable checkpoint" in err


def test_image_size_not_divisible_by_patch_fails_before_training(tmp_path, capsys):
    err = fail(capsys, tiny_fit_args(tmp_path / "run", "--model.backbone.init_args.patch_size=5"))
    assert "16x16 is not divisible by the patch size 5x5" in err
    assert not (tmp_path / "run").exists()


def test_unknown_variant_fails_before_training(tmp_path, capsys):
    err = fail(capsys, tiny_fit_args(tmp_path / "run", "--model.backbone.init_args.variant=XXL"))
    assert "unknown ViT variant 'XXL'" in err


def test_data_and_model_channel_mismatch_names_the_fix(tmp_path, capsys):
    err = fail(capsys, tiny_fit_args(tmp_path / "run", "--model.backbone.init_args.in_chans=3"))
    assert "in_chans: 1" in err


def test_predict_writes_top_k_classes_with_names_and_probabilities(trained, tmp_path):
    images = DigitsDataModule().arrays()["test"][0][:5, :, :, 0]
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / f"digit{i}.png")
    out = tmp_path / "pred.csv"
    main(
        [
            "predict",
            f"--config={trained / 'config.yaml'}",
            "--ckpt_path=best",
            f"--data.predict_path={tmp_path}",
            f"--predict_output={out}",
            "--predict_top_k=3",
        ]
    )
    rows = list(csv.DictReader(open(out)))
    assert [os.path.basename(r["path"]) for r in rows] == [f"digit{i}.png" for i in range(5)]
    assert list(rows[0]) == ["path", "class_1", "prob_1", "class_2", "prob_2", "class_3", "prob_3"]
    for r in rows:
        probs = [float(r[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert r["class_1"] in [str(i) for i in range(10)]
    assert (trained / "config.yaml").read_text().count("predict_path") == 1  # the training config is not overwritten


def test_help_and_print_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--trainer.default_root_dir" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--config=experiments/quickstart.yaml", "--print_config"])
    printed = capsys.readouterr().out
    assert "lit_vit.models.VisionTransformer" in printed and "default_root_dir: runs/quickstart" in printed


@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    args = tiny_fit_args(run_dir, "--trainer.strategy=ddp", "--trainer.devices=2", limit_batches=3)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "lit_vit", *args], capture_output=True, text=True, env=env, timeout=300, cwd=os.getcwd()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size: 2" in proc.stderr or "distributed_backend=gloo" in proc.stderr
    last = ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3  # 3 batches per process per epoch, as in a single process
    val_losses = [float(r["val/loss"]) for r in read_metrics(run_dir) if r.get("val/loss")]
    assert len(val_losses) == 1 and np.isfinite(val_losses[0])  # one row, reduced over both processes


@pytest.mark.slow
def test_a_run_killed_with_sigterm_leaves_a_loadable_checkpoint_and_resumes(tmp_path):
    """What a cluster scheduler does: SIGTERM mid-epoch, then the job is requeued with --ckpt_path last."""
    run_dir, record = tmp_path / "run", tmp_path / "batches.jsonl"
    args = tiny_fit_args(run_dir, callbacks_arg(record), "--checkpoint_every_n_steps=1000", limit_batches=400)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=os.path.dirname(__file__))
    proc = subprocess.Popen([sys.executable, "-m", "lit_vit", *args], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and (not record.exists() or len(record.read_text().splitlines()) < 5):
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]  # Lightning alone would exit 0: "finished"
    assert "interrupted by SIGTERM: last.ckpt is saved" in err
    killed = ckpt(run_dir / "checkpoints" / "last.ckpt")
    steps_done = killed["global_step"]
    assert 5 <= steps_done < 78  # mid-epoch (78 batches of 16 per epoch): saved on SIGTERM, not by the periodic save
    main(tiny_fit_args(run_dir, "--ckpt_path=last", limit_batches=400))
    finished = ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert (finished["epoch"], finished["global_step"]) == (1, 78)
