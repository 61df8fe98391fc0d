"""Sweeps beyond one process: every run under DDP (Lightning's launcher re-executes the sweep command on the other
ranks; rank 0 alone writes), and reruns whose config differs from the sweep.yaml the runs used are refused."""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from test_ablation import sweep_config, write_config

from lit_vit.cli import main


def read_results(root) -> list[dict]:
    with open(root / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_sweep_under_ddp_with_two_cpu_processes(tmp_path):
    root = tmp_path / "out"
    config = sweep_config(root, seeds=(0,))
    config["trainer"]["callbacks"] = []
    path = write_config(tmp_path / "sweep.yaml", config)
    argv = ["fit", f"--config={path}", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "lit_vit", *argv], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'expected "subcommand"' not in proc.stderr
    rows = read_results(root)
    assert [(r["variant"], r["seed"]) for r in rows] == [("none", "0"), ("learned_1d", "0")]
    for r in rows:
        done = json.loads((root / r["variant"] / "seed=0" / "done.json").read_text())
        # 2 batches per epoch per process x 2 epochs: both processes trained every run together
        assert done["steps"] == 4 and done["variant"] == r["variant"]
    assert proc.stderr.count("ablation sweep") == 1  # rank 0 alone reports (and writes)


def test_a_rerun_with_another_config_is_refused_and_new_seeds_only_add_runs(tmp_path, capsys):
    root = tmp_path / "out"
    config = sweep_config(root, variants=[{"name": "learned_1d", "overrides": {}}], seeds=(0,))
    config["trainer"]["callbacks"] = []
    path = write_config(tmp_path / "sweep.yaml", config)
    main(["fit", f"--config={path}"])
    saved = (root / "sweep.yaml").read_text()
    done = (root / "learned_1d" / "seed=0" / "done.json").stat().st_mtime_ns

    with pytest.raises(SystemExit) as exc:
        main(["fit", f"--config={path}", "--trainer.max_epochs=5", "--model.init_args.lr=0.01"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "trainer.max_epochs: 5 now, 2 in sweep.yaml" in err and "model.init_args.lr: 0.01 now" in err
    assert "--trainer.default_root_dir <new folder>" in err
    assert (root / "sweep.yaml").read_text() == saved  # never rewritten to values the runs did not use

    config["ablation"]["variants"][0]["overrides"] = {"model.init_args.lr": 0.01}  # a variant's values changed
    with pytest.raises(SystemExit):
        main(["fit", f"--config={write_config(tmp_path / 'changed.yaml', config)}"])
    assert "ablation variant learned_1d overrides" in capsys.readouterr().err

    config["ablation"]["variants"][0]["overrides"] = {}
    config["ablation"]["seeds"] = [0, 1]  # an added seed: only its run trains
    main(["fit", f"--config={write_config(tmp_path / 'more.yaml', config)}", "--num_threads=1"])
    assert (root / "learned_1d" / "seed=0" / "done.json").stat().st_mtime_ns == done
    assert [r["seed"] for r in read_results(root)] == ["0", "1"]
    assert yaml.safe_load((root / "sweep.yaml").read_text())["ablation"]["seeds"] == [0, 1]


def trained_labels(text: str) -> list[str]:
    """The runs a sweep process trained, from its console output ("run i/n <variant> seed=<s> (new ..." lines)."""
    return re.findall(r"run \d+/\d+ (\S+ seed=\d+) \((?:new|resuming)", text)


def four_run_sweep(tmp_path, **trainer) -> tuple:
    root = tmp_path / "out"
    config = sweep_config(root)
    config["trainer"]["callbacks"] = []
    config["trainer"] |= trainer
    return root, write_config(tmp_path / "sweep.yaml", config)


def test_two_workers_share_the_runs_and_train_each_once(tmp_path):
    root, path = four_run_sweep(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "lit_vit", "fit", f"--config={path}", "--ablation.workers=2"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [(root / "logs" / f"worker{i}.log").read_text() for i in range(2)]
    per_worker = [trained_labels(log) for log in logs]
    trained = sorted(sum(per_worker, []))
    assert trained == sorted(["none seed=0", "learned_1d seed=0", "none seed=1", "learned_1d seed=1"])  # each once
    assert all(per_worker), per_worker  # both workers trained
    assert "OMP_NUM_THREADS" in proc.stderr and len(read_results(root)) == 4
    assert not list(root.rglob("claim.json"))  # every claim released
    assert (root / "accuracy.png").is_file()


def test_two_sweep_processes_on_one_folder_never_train_the_same_run(tmp_path):
    """What two hosts (or a SLURM job array) sharing the sweep folder do: the same command, started twice."""
    root, path = four_run_sweep(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "lit_vit", "fit", f"--config={path}", "--num_threads=1"]
    procs = [subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[-2000:] for o in outs]
    trained = sorted(sum((trained_labels(o) for o in outs), []))
    assert trained == sorted(["none seed=0", "learned_1d seed=0", "none seed=1", "learned_1d seed=1"])
    assert len(read_results(root)) == 4 and (root / "accuracy.png").is_file()


def test_a_worker_killed_with_sigkill_leaves_its_run_to_the_rerun(tmp_path):
    root, path = four_run_sweep(tmp_path, limit_train_batches=400, max_epochs=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "lit_vit", "fit", f"--config={path}", "--checkpoint_every_n_steps=3"]
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL, env=env)
    first = root / "none" / "seed=0"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (first / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    claim = json.loads((first / "claim.json").read_text())
    assert claim["pid"] == proc.pid  # the claim outlives its holder ...
    killed_step = torch.load(first / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    main(["fit", f"--config={path}", "--num_threads=1"])  # ... and is stale: the rerun takes the run over
    done = json.loads((first / "done.json").read_text())
    assert done["steps"] == 157 and killed_step >= 3  # resumed from the killed run's checkpoint to the epoch's end
    assert not (first / "claim.json").exists() and len(read_results(root)) == 4
