"""Sweeps beyond one process: every run under DDP (Lightning's launcher re-executes the sweep command on the other
ranks; rank 0 alone writes), and reruns whose config differs from the sweep.yaml the runs used are refused."""

import csv
import json
import os
import subprocess
import sys

import pytest
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
