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


# torchrun starts both ranks (rank from the environment); Lightning's own launcher, which starts rank 1 with the
# sweep's command line, is covered by test_a_ddp_sweep_stopped_by_sigterm_resumes_with_the_same_command
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "lit_vit"]


@pytest.mark.slow
def test_a_sweep_under_ddp_with_two_cpu_processes_started_by_torchrun(tmp_path):
    root = tmp_path / "out"
    config = sweep_config(root, seeds=(0,))
    config["trainer"]["callbacks"] = []
    path = write_config(tmp_path / "sweep.yaml", config)
    argv = ["fit", f"--config={path}", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*TORCHRUN, *argv], capture_output=True, text=True, env=env, timeout=600)
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
    """The runs a sweep process trained, from its console output ("run i/n <variant> seed=<s>: started ..." lines)."""
    return re.findall(r"run \d+/\d+ (\S+ seed=\d+): started", text)


def four_run_sweep(tmp_path, **trainer) -> tuple:
    root = tmp_path / "out"
    config = sweep_config(root)
    config["trainer"]["callbacks"] = []
    config["trainer"] |= trainer
    return root, write_config(tmp_path / "sweep.yaml", config)


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_tensorboard_and_other_loggers_come_beside_metrics_csv_with_the_lr_per_step(tmp_path):
    pytest.importorskip("tensorboard")
    from conftest import tiny_fit_args

    run = tmp_path / "run"
    extra = tmp_path / "extra"
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(extra)}}
    main(tiny_fit_args(run, "--tensorboard=true", f"--trainer.logger={json.dumps(logger)}"))
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert list(extra.rglob("metrics.csv"))  # the configured logger got the metrics too
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lr_columns = [c for c in rows[0] if c.startswith("lr-")]
    assert lr_columns  # LearningRateMonitor, every log step (log_every_n_steps 2, 4 steps)
    assert len([r for r in rows if r[lr_columns[0]]]) >= 2


def test_a_sweep_gives_every_run_its_own_tensorboard_folder(tmp_path):
    pytest.importorskip("tensorboard")
    root = tmp_path / "out"
    config = sweep_config(root, seeds=(0,))
    config["trainer"]["callbacks"] = []
    config["tensorboard"] = True
    main(["fit", f"--config={write_config(tmp_path / 'sweep.yaml', config)}", "--num_threads=1"])
    for variant in ("none", "learned_1d"):
        assert list((root / variant / "seed=0" / "tensorboard").glob("events.out.tfevents.*"))
    rows = read_results(root)
    assert all(float(r["train_images_per_s"]) > 0 and float(r["wall_s"]) > 0 for r in rows)  # ThroughputLogger's


def test_the_fsdp_wrap_policy_makes_one_unit_per_transformer_block():
    from lit_vit.models import T2TViT, VisionTransformer
    from lit_vit.models.layers import Block
    from lit_vit.models.vilt import ViLT
    from lit_vit.strategies import TransformerFSDP, block_wrap_policy

    policy = block_wrap_policy()
    models = {
        "vit": VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2),
        "t2t": T2TViT(img_size=32, tokens_type="performer", embed_dim=32, depth=2, num_heads=2, token_dim=8),
        "vilt": ViLT(vocab_size=50, max_text_len=12, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4),
    }
    try:
        from lit_vit.models import HybridViT

        models["hybrid"] = HybridViT(variant="R-Ti/16")
    except ImportError:
        pass
    for name, model in models.items():
        units = [m for m in model.modules() if policy(module=m, recurse=False, nonwrapped_numel=0)]
        assert units == list(model.blocks), name  # every block, in order, and nothing else
        assert all(isinstance(u, Block) for u in units)
        assert policy(module=model, recurse=True, nonwrapped_numel=0)  # the policy descends into every child
    strategy = TransformerFSDP(activation_checkpointing=True)
    assert strategy.sharding_strategy.name == "FULL_SHARD"


@pytest.mark.parametrize("recipe", ["vit_l16_fsdp", "vit_h14_fsdp"])
def test_the_fsdp_recipes_parse_and_fsdp_on_a_cpu_is_a_clear_error(recipe, capsys, tmp_path):
    path = f"experiments/imagenet/{recipe}.yaml"
    with pytest.raises(SystemExit):
        main(["fit", f"--config={path}", "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"]["class_path"] == "lit_vit.strategies.TransformerFSDP"
    assert printed["model"]["init_args"]["backbone"]["init_args"]["variant"] in ("L", "H")
    # FSDP needs GPUs (torch refuses CPU-only processes): said before anything starts
    with pytest.raises(SystemExit) as exc:
        main(["fit", f"--config={path}", "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path / 'r'}"])
    assert exc.value.code == 2 and "FSDP needs GPUs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_ddp_sweep_stopped_by_sigterm_resumes_with_the_same_command(tmp_path):
    root = tmp_path / "out"
    config = sweep_config(root, variants=[{"name": "none", "overrides": {}}], seeds=(0,))  # one run: the one stopped
    config["trainer"]["callbacks"] = []
    config["trainer"]["limit_train_batches"] = 400  # 78 steps per epoch and process: long enough to be stopped
    path = write_config(tmp_path / "sweep.yaml", config)
    argv = ["fit", f"--config={path}", "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    command = [sys.executable, "-m", "lit_vit", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env)
    last = root / "none" / "seed=0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not last.is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)  # what a scheduler does to the job's main process
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "stopped by SIGTERM" in err and not (root / "none" / "seed=0" / "done.json").exists()
    stopped_at = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"none seed=0: started on .* \(resuming at epoch", proc.stderr), proc.stderr[-3000:]
    done = json.loads((root / "none" / "seed=0" / "done.json").read_text())
    # 2 epochs x 78 steps per process (both processes trained the run together), the first part before the stop
    assert done["steps"] == 156 and 0 < stopped_at < 156
    assert len(read_results(root)) == 1
    # Lightning's launcher started rank 1 with the sweep's own command line; rank 0 alone reports (and writes)
    assert 'expected "subcommand"' not in proc.stderr and proc.stderr.count("ablation sweep") == 1


def test_the_sigterm_handler_runs_no_collective():
    """Lightning 2.6's SIGTERM handler broadcasts from inside the signal handler and deadlocks DDP runs; lit_vit's
    replacement only sets the flag that the training loop broadcasts at the next step."""
    import inspect

    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    import lit_vit
    from lit_vit import lightning_compat

    assert lit_vit.patch_lightning() is True and lit_vit.patch_lightning() is True  # idempotent
    assert "dist.broadcast" not in inspect.getsource(_SignalConnector._sigterm_notifier_fn)
    assert _SignalConnector._sigterm_notifier_fn is lightning_compat._sigterm_notifier_without_collective
