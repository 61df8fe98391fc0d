"""The second fault battery (issue 23): resumed configs, concurrent fits, exact resume of RNG-drawing recipes, full
and read-only file systems, predict_top_k, evaluation folders, fine-tuning from another architecture, Ctrl-C."""

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_fit_args
from PIL import Image

from lit_vit.cli import main
from lit_vit.run_folder import new_evaluation_dir

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


def ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint, written by this test


def metrics(run_dir):
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def fail(capsys, args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def evaluations(run_dir) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "evaluations").glob("*/evaluation.json"))]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """A run trained 1 epoch, then resumed to 2 with --ckpt_path last (the case that stored ckpt_path before)."""
    run = tmp_path_factory.mktemp("resumed") / "run"
    main(tiny_fit_args(run, max_epochs=1))
    main(tiny_fit_args(run, "--ckpt_path=last", max_epochs=2))
    return run


# -- 1. config.yaml is a recipe -------------------------------------------------------------------------------


def test_a_resumed_runs_config_stores_no_checkpoint_path(resumed):
    cfg = yaml.safe_load((resumed / "config.yaml").read_text())
    assert cfg["ckpt_path"] is None
    assert str(resumed / "checkpoints") not in (resumed / "config.yaml").read_text()


def test_test_after_a_resume_uses_best_ckpt_and_says_so(resumed, capsys):
    main(["test", f"--config={resumed / 'config.yaml'}"])
    err = capsys.readouterr().err
    assert f"using {resumed / 'checkpoints' / 'best.ckpt'}" in err
    (record,) = [e for e in evaluations(resumed) if e["command"].startswith("python -m lit_vit test ")]
    assert record["checkpoint"] == str((resumed / "checkpoints" / "best.ckpt").resolve())


def test_a_copied_run_folder_evaluates_its_own_files(resumed, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(resumed, copy, ignore=shutil.ignore_patterns("evaluations"))
    main(["validate", f"--config={copy / 'config.yaml'}"])
    err = capsys.readouterr().err
    assert f"using the run folder of {copy / 'config.yaml'}" in err
    (record,) = evaluations(copy)
    assert record["checkpoint"] == str((copy / "checkpoints" / "best.ckpt").resolve())
    assert record["command"] == f"python -m lit_vit validate --config={copy / 'config.yaml'}"
    assert not any("validate" in e["command"] for e in evaluations(resumed))  # nothing filed under the original


def test_a_config_that_still_names_a_checkpoint_is_read_as_a_recipe(resumed, tmp_path, capsys):
    """config.yaml files written before this fix carry ckpt_path: it is ignored, with a notice."""
    old = tmp_path / "old"
    shutil.copytree(resumed, old, ignore=shutil.ignore_patterns("evaluations"))
    cfg = yaml.safe_load((old / "config.yaml").read_text())
    cfg["ckpt_path"] = str(resumed / "checkpoints" / "last.ckpt")
    (old / "config.yaml").write_text(yaml.safe_dump(cfg))
    main(["test", f"--config={old / 'config.yaml'}"])
    err = capsys.readouterr().err
    assert "ignoring ckpt_path" in err
    (record,) = evaluations(old)
    assert record["checkpoint"] == str((old / "checkpoints" / "best.ckpt").resolve())


def test_a_fit_from_a_finished_runs_config_into_a_new_folder_trains_a_new_run(resumed, tmp_path):
    new = tmp_path / "new"
    main(["fit", f"--config={resumed / 'config.yaml'}", f"--trainer.default_root_dir={new}"])
    last = ckpt(new / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 8)  # two epochs of 4 steps, trained here from scratch
    assert [int(r["step"]) for r in metrics(new) if r.get("train/loss")][0] == 1


def test_a_fit_from_a_runs_own_config_does_not_overwrite_it(resumed, capsys):
    err = fail(capsys, ["fit", f"--config={resumed / 'config.yaml'}"])
    assert "already holds a run" in err and "--ckpt_path last" in err


# -- 2. one writer per run folder ----------------------------------------------------------------------------


def test_a_fit_into_a_folder_held_by_a_live_process_is_refused_naming_it(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.mkdir()
        claim = {"host": os.uname().nodename, "pid": holder.pid, "started": time.time()}
        (run / "claim.json").write_text(json.dumps(claim))
        err = fail(capsys, tiny_fit_args(run))
        assert f"pid {holder.pid}" in err and "being written by another fit" in err
        assert sorted(p.name for p in run.iterdir()) == ["claim.json"]  # nothing written
    finally:
        holder.kill()
        holder.wait()
    main(tiny_fit_args(run))  # the holder is gone: its claim is stale and taken over
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "claim.json").exists()


@pytest.mark.slow
def test_two_fits_started_together_into_one_folder_one_trains_the_other_names_the_holder(tmp_path):
    run = tmp_path / "run"
    slow = {"class_path": "_ablation_callbacks.SlowSteps", "init_args": {"run": "run", "seconds": 0.4}}
    argv = [sys.executable, "-m", "lit_vit", *tiny_fit_args(run, _callbacks(slow), max_epochs=2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    procs = [subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in outs)
    assert codes == [0, 2], outs
    refused = next(err for code, err in outs if code == 2)
    winner = next(p for p, (code, _) in zip(procs, outs) if code == 0)
    assert "Traceback" not in refused and len(refused.strip().splitlines()) == 1, refused
    # the race (the winner trains for >= 3 s, 8 slow steps): the loser names it; on a machine so loaded that one
    # process finished before the other had imported Lightning, the loser finds a finished run instead
    assert f"pid {winner.pid}" in refused or "already holds a run" in refused, refused
    rows = metrics(run)
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [1, 3, 5, 7]  # one run's rows, in order
    val = [float(r["val/acc1"]) for r in rows if r.get("val/acc1")]
    assert len(val) == 2 and all(v * 64 == round(v * 64) for v in val)  # one run: 2 epochs of 4 val batches of 16


# -- 3. exact resume for RNG-drawing recipes -----------------------------------------------------------------

EMA = {"class_path": "lit_vit.callbacks.EMA", "init_args": {"decay": 0.9}}


def _callbacks(*extra) -> str:
    return "--trainer.callbacks=" + json.dumps(list(extra))


@pytest.mark.parametrize("ema", [False, True], ids=["drop_path", "drop_path+ema"])
def test_a_drop_path_run_killed_mid_epoch_resumes_bit_for_bit(tmp_path, ema):
    common = dict(max_epochs=2, limit_batches=8)
    opts = ["--model.backbone.init_args.drop_path_rate=0.1", "--checkpoint_every_n_steps=3"]
    extra = [EMA] if ema else []
    crash = {"class_path": "_cli_callbacks.CrashAtStep", "init_args": {"step": 13}}
    ref, run = tmp_path / "ref", tmp_path / "run"
    main(tiny_fit_args(ref, *opts, _callbacks(*extra), **common))
    with pytest.raises(RuntimeError, match="simulated crash"):  # no checkpoint at the crash: as a SIGKILL
        main(tiny_fit_args(run, *opts, _callbacks(*extra, crash), **common))
    assert ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == 12  # the periodic checkpoint, mid-epoch
    torch.manual_seed(1234)  # whatever the process's random state, the checkpoint's is restored
    main(tiny_fit_args(run, *opts, _callbacks(*extra), "--ckpt_path=last", **common))
    a, b = ckpt(ref / "checkpoints" / "last.ckpt"), ckpt(run / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == 16
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    if ema:
        assert all(torch.equal(a["current_model_state"][k], b["current_model_state"][k]) for k in a["state_dict"])
    # the interrupted epoch's train/acc1 covers all of its batches, as in the uninterrupted run
    ref_acc = [r["train/acc1"] for r in metrics(ref) if r.get("train/acc1")]
    run_acc = [r["train/acc1"] for r in metrics(run) if r.get("train/acc1")]
    assert run_acc == ref_acc and len(ref_acc) == 2


def test_the_checkpoint_holds_every_random_state_loadable_without_pickle(tmp_path):
    main(tiny_fit_args(tmp_path / "run", "--checkpoint_every_n_steps=3", max_epochs=1, limit_batches=8))
    path = tmp_path / "run" / "checkpoints" / "last.ckpt"
    states = torch.load(path, map_location="cpu", weights_only=True)["lit_vit_rank_states"]
    assert len(states) == 1 and set(states[0]["rng"]) >= {"torch", "numpy", "python"}
    assert "train_metrics" not in states[0]  # written at the end of the epoch: nothing unfinished to carry


# -- 4. failures as one line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["full", "read-only"])
def test_a_checkpoint_that_cannot_be_written_is_one_line_and_leaves_no_tmp(tmp_path, capsys, monkeypatch, code):
    from lightning.pytorch.plugins import TorchCheckpointIO

    def failing_save(self, checkpoint, path, storage_options=None):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"PK\x03\x04 half a checkpoint")
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", failing_save)
    run = tmp_path / "run"
    err = fail(capsys, tiny_fit_args(run))
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "cannot write" in line and ("last.ckpt" in line or "best.ckpt" in line)
    assert errno.errorcode[code] in line
    assert not list(run.rglob("*.tmp")) and not (run / "claim.json").exists()


def test_a_read_only_run_folder_is_one_line_before_anything_runs(tmp_path, capsys, monkeypatch):
    import lit_vit.run_folder as rf

    def read_only(run_dir):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(run_dir))

    monkeypatch.setattr(rf, "try_claim", read_only)
    err = fail(capsys, tiny_fit_args(tmp_path / "run"))
    assert "cannot write to the run folder" in err and "Read-only file system" in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("trained") / "run"
    main(tiny_fit_args(run, max_epochs=1))
    return run


@pytest.mark.parametrize("k", ["-3", "0", "11"])
def test_predict_top_k_outside_one_to_num_classes_is_refused(trained, tmp_path, capsys, k):
    out = tmp_path / "pred.csv"
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(tmp_path / "digit.png")
    err = fail(
        capsys,
        ["predict", f"--config={trained / 'config.yaml'}", f"--predict_top_k={k}", f"--predict_output={out}",
         f"--data.predict_path={tmp_path}"],
    )  # fmt: skip
    assert f"--predict_top_k {k}" in err or f"got {k}" in err
    assert not out.exists()


def test_two_evaluations_in_the_same_second_get_two_folders(trained, tmp_path):
    ckpt_path = str(trained / "checkpoints" / "best.ckpt")
    names = {new_evaluation_dir(tmp_path, "test", ckpt_path, True) for _ in range(3)}
    assert len(names) == 3
    for name in names:
        record = json.loads((tmp_path / "evaluations" / name / "evaluation.json").read_text())
        assert record["checkpoint"] == str(Path(ckpt_path).resolve()) and "command" in record


def test_fine_tuning_from_another_architecture_names_both(trained, tmp_path, capsys):
    wider = '{"class_path": "lit_vit.models.VisionTransformer", "init_args": {"img_size": 16, "patch_size": 4, '
    wider += '"in_chans": 1, "embed_dim": 48, "depth": 2, "num_heads": 2}}'
    args = tiny_fit_args(tmp_path / "ft", f"--model.backbone={wider}")
    err = fail(capsys, [*args, f"--model.pretrained={trained / 'checkpoints' / 'best.ckpt'}"])
    assert "VisionTransformer(embed_dim=32)" in err and "VisionTransformer(embed_dim=48)" in err


# -- Ctrl-C ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_stops_at_a_step_boundary_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    opts = ["--model.backbone.init_args.drop_path_rate=0.1", "--checkpoint_every_n_steps=0"]
    slow = {"class_path": "_ablation_callbacks.SlowSteps", "init_args": {"run": "run", "seconds": 0.25}}
    common = dict(max_epochs=2, limit_batches=12)
    ref, run = tmp_path / "ref", tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "tests")}
    main(tiny_fit_args(ref, *opts, **common))  # the reference and the resume in this process; the Ctrl-C in its own
    argv = [sys.executable, "-m", "lit_vit", *tiny_fit_args(run, *opts, _callbacks(slow), **common)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (run / "metrics.csv").is_file() and time.time() < deadline:  # training has started
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 130, err[-2000:]
    assert "interrupted (Ctrl-C)" in err and "Traceback" not in err and "KeyboardInterrupt" not in err
    stopped = ckpt(run / "checkpoints" / "last.ckpt")["global_step"]
    assert 0 < stopped < 24
    main(tiny_fit_args(run, *opts, "--ckpt_path=last", **common))
    a, b = ckpt(ref / "checkpoints" / "last.ckpt"), ckpt(run / "checkpoints" / "last.ckpt")
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    steps = lambda d: [(r["step"], r["train/loss"]) for r in metrics(d) if r.get("train/loss")]  # noqa: E731
    assert steps(run) == steps(ref)  # every row at the uninterrupted run's step, with its value
