"""Ablation sweeps: variants x seeds as ordinary runs, resume / skip, validation before any run, results and plots."""

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
import yaml
from conftest import TINY_VIT

from lit_vit.ablation.plots import plot_sweep
from lit_vit.callbacks.artifacts import attention_rollout, mean_attention_distance, relative_bias_maps
from lit_vit.cli import main
from lit_vit.models import VisionTransformer

POS = "model.init_args.backbone.init_args.pos_embed"
PLOTS = ["accuracy.png", "curves.png", "pos_embed_similarity.png", "attention_distance.png", "attention_rollout.png"]
RUNS = ["none/seed=0", "learned_1d/seed=0", "none/seed=1", "learned_1d/seed=1"]


def sweep_config(root, variants=None, seeds=(0, 1), callbacks=()) -> dict:
    variants = variants or [
        {"name": "none", "overrides": {POS: "none"}},
        {"name": "learned_1d", "overrides": {POS: "learned_1d", "model.init_args.lr": 0.002}},
    ]
    return {
        "seed_everything": 0,
        "checkpoint_every_n_steps": 2,
        "ablation": {"seeds": list(seeds), "variants": variants},
        "trainer": {
            "default_root_dir": str(root),
            "max_epochs": 2,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": [
                {"class_path": "lit_vit.callbacks.ViTArtifacts", "init_args": {"num_images": 8, "rollout_images": 2}},
                *callbacks,
            ],
        },
        "model": {"class_path": "lit_vit.modules.ImageClassifier", "init_args": {"backbone": TINY_VIT}},
        "data": {"class_path": "lit_vit.data.DigitsDataModule", "init_args": {"batch_size": 8}},
    }


def write_config(path, config) -> str:
    path.write_text(yaml.safe_dump(config))
    return str(path)


def mtimes(root) -> dict[str, int]:
    return {
        str(p.relative_to(root)): p.stat().st_mtime_ns
        for p in root.rglob("*")
        if p.is_file() and (p.name in ("done.json", "last.ckpt", "best.ckpt", "metrics.csv") or p.suffix == ".npz")
    }


def read_steps(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2 x 2 sweep whose second run crashes at step 3 (after its step-2 checkpoint), then the same command again."""
    tmp = tmp_path_factory.mktemp("sweep")
    root, steps = tmp / "out", tmp / "steps.jsonl"
    callbacks = [
        {
            "class_path": "_ablation_callbacks.CrashOnce",
            "init_args": {"run": "learned_1d/seed=0", "step": 3, "marker": str(tmp / "crashed")},
        },
        {"class_path": "_ablation_callbacks.RecordSteps", "init_args": {"path": str(steps)}},
    ]
    config = write_config(tmp / "ablation.yaml", sweep_config(root, callbacks=callbacks))
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(["fit", "--config", config])
    after_crash = {
        "mtimes": mtimes(root),
        "steps": read_steps(steps),
        "dirs": sorted(p.relative_to(root).as_posix() for p in root.glob("*/seed=*")),
    }
    os.remove(steps)
    main(["fit", "--config", config])
    return {"root": root, "config": config, "steps_file": steps, "after_crash": after_crash, "steps": read_steps(steps)}


def test_crashed_sweep_resumes_the_interrupted_run_and_never_retrains_the_finished_one(sweep):
    root, crash = sweep["root"], sweep["after_crash"]
    assert "none/seed=0/done.json" in crash["mtimes"]
    assert "learned_1d/seed=0/done.json" not in crash["mtimes"]
    assert "learned_1d/seed=0/checkpoints/last.ckpt" in crash["mtimes"]
    assert crash["dirs"] == ["learned_1d/seed=0", "none/seed=0"]  # nothing after the crash started
    assert [s["step"] for s in crash["steps"] if s["run"] == "learned_1d/seed=0"] == [0, 1, 2]  # crashed at 3
    rerun = sweep["steps"]
    assert not [s for s in rerun if s["run"] == "none/seed=0"]  # finished: not retrained
    assert [s["step"] for s in rerun if s["run"] == "learned_1d/seed=0"] == [2, 3]  # resumed after step 2
    assert [s["step"] for s in rerun if s["run"] == "none/seed=1"] == [0, 1, 2, 3]
    for name in ("none/seed=0/done.json", "none/seed=0/checkpoints/last.ckpt"):
        assert mtimes(root)[name] == crash["mtimes"][name]
    done = json.loads((root / "learned_1d" / "seed=0" / "done.json").read_text())
    assert done["steps"] == 4 and done["epochs"] == 2
    with open(root / "learned_1d" / "seed=0" / "metrics.csv") as f:
        val_epochs = [row["epoch"] for row in csv.DictReader(f) if row.get("val/acc1")]
    assert val_epochs == ["0", "1"]  # one validation per epoch: no duplicated rows after the resume


@pytest.mark.slow
def test_a_sweep_killed_with_sigterm_keeps_finished_runs_and_resumes_the_live_one(tmp_path):
    """A scheduler's SIGTERM in the middle of the second run: the sweep stops there (it does not start the next run),
    the live run leaves last.ckpt, and the same command finishes the sweep without retraining the first run."""
    root, steps = tmp_path / "out", tmp_path / "steps.jsonl"
    variants = [
        {"name": "none", "overrides": {POS: "none"}},
        {"name": "relative", "overrides": {POS: "relative", "trainer.limit_train_batches": 40}},
    ]
    callbacks = [
        {"class_path": "_ablation_callbacks.RecordSteps", "init_args": {"path": str(steps)}},
        {"class_path": "_ablation_callbacks.SlowSteps", "init_args": {"run": "relative/seed=0", "seconds": 0.05}},
    ]
    config = sweep_config(root, variants, seeds=(0, 1), callbacks=callbacks)
    config["checkpoint_every_n_steps"] = 1000  # the live run's last.ckpt can only come from the SIGTERM save
    path = write_config(tmp_path / "ablation.yaml", config)
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", PYTHONPATH=os.path.dirname(__file__))
    cmd = [sys.executable, "-m", "lit_vit", "fit", "--config", path]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and sum(s["run"] == "relative/seed=0" for s in read_steps(steps)) < 3:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]  # not 0: the sweep did not finish
    assert "relative seed=0 stopped by SIGTERM" in err and "--ckpt_path last" in err
    live = root / "relative" / "seed=0"
    killed = torch.load(live / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"]
    assert 3 <= killed < 80
    assert (root / "none" / "seed=0" / "done.json").is_file() and not (live / "done.json").exists()
    assert not (root / "none" / "seed=1").exists()  # the sweep stopped at the killed run
    before = mtimes(root)
    os.remove(steps)
    main(["fit", "--config", path])
    rerun = read_steps(steps)
    assert [s["step"] for s in rerun if s["run"] == "relative/seed=0"] == list(range(killed, 80))
    assert not [s for s in rerun if s["run"] == "none/seed=0"]
    assert mtimes(root)["none/seed=0/done.json"] == before["none/seed=0/done.json"]
    with open(root / "results.csv") as f:
        rows = [(r["variant"], r["seed"], r["steps"]) for r in csv.DictReader(f)]
    assert sorted(rows) == sorted([("none", "0", "4"), ("none", "1", "4"), ("relative", "0", "80"),
                                   ("relative", "1", "80")])  # fmt: skip
    assert (root / "relative_bias.png").stat().st_size > 1000  # the relative kind's own artifact, drawn at the end
    assert (live / "artifacts" / "relative_bias.npz").is_file()
    assert not (root / "none" / "seed=0" / "artifacts" / "relative_bias.npz").exists()


def test_sweep_writes_every_run_as_an_ordinary_run_with_its_overrides_and_seed(sweep):
    root = sweep["root"]
    for run in RUNS:
        for name in ("config.yaml", "metrics.csv", "done.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
            assert (root / run / name).is_file(), f"{run}/{name}"
    cfg = yaml.safe_load((root / "learned_1d" / "seed=1" / "config.yaml").read_text())
    assert cfg["seed_everything"] == 1 and cfg["data"]["init_args"]["seed"] == 1
    assert cfg["trainer"]["default_root_dir"] == str(root / "learned_1d" / "seed=1")
    assert cfg["model"]["init_args"]["lr"] == 0.002
    assert cfg["model"]["init_args"]["backbone"]["init_args"]["pos_embed"] == "learned_1d"
    assert cfg["ablation"] is None
    none_cfg = yaml.safe_load((root / "none" / "seed=0" / "config.yaml").read_text())
    assert none_cfg["model"]["init_args"]["backbone"]["init_args"]["pos_embed"] == "none"
    assert none_cfg["model"]["init_args"]["lr"] == 0.001
    # the checkpoints really hold different models (different seeds, different position embeddings)
    a = torch.load(root / "none" / "seed=0" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    b = torch.load(root / "none" / "seed=1" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert not torch.equal(a["backbone.head.weight"], b["backbone.head.weight"])
    assert "backbone.pos_embed.pos_embed" not in a


def test_results_csv_has_one_row_per_run_and_the_plots_exist(sweep):
    root = sweep["root"]
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], r["seed"]) for r in rows] == [
        ("none", "0"),
        ("none", "1"),
        ("learned_1d", "0"),
        ("learned_1d", "1"),
    ]
    for row in rows:
        with open(root / row["variant"] / f"seed={row['seed']}" / "metrics.csv") as f:
            val = [float(r["val/acc1"]) for r in csv.DictReader(f) if r.get("val/acc1")]
        assert len(val) == 2 and all(v * 8 == round(v * 8) for v in val)  # 2 epochs, each 1 val batch of 8 digits
        assert float(row["final_val_acc1"]) == val[-1] and float(row["best_val_acc1"]) == max(val)
        assert float(row["final_val_acc5"]) >= float(row["final_val_acc1"])
        assert float(row["train_images_per_s"]) > 0 and float(row["wall_s"]) > 0 and row["final_val_loss"]
    params = {r["variant"]: int(r["params"]) for r in rows}
    assert params["learned_1d"] - params["none"] == 17 * 32  # the (1 + 16) x 32 position table
    for name in PLOTS:
        assert (root / name).stat().st_size > 1000


def test_artifacts_hold_the_numbers_behind_the_pngs(sweep):
    learned = sweep["root"] / "learned_1d" / "seed=0" / "artifacts"
    sim = np.load(learned / "pos_embed_similarity.npz")["similarity"]
    assert sim.shape == (4, 4, 4, 4)
    np.testing.assert_allclose([sim[r, c, r, c] for r in range(4) for c in range(4)], 1.0, atol=1e-5)
    distance = np.load(learned / "attention_distance.npz")["distance"]
    assert distance.shape == (2, 2) and (distance > 0).all()  # depth x heads, in pixels
    rollout = np.load(learned / "attention_rollout.npz")
    assert rollout["rollout"].shape == (2, 4, 4) and rollout["images"].shape == (2, 1, 16, 16)
    assert (learned / "pos_embed_similarity.png").is_file() and (learned / "attention_rollout.png").is_file()
    none = sweep["root"] / "none" / "seed=0" / "artifacts"
    assert not (none / "pos_embed_similarity.npz").exists()  # no table, nothing to compare
    assert (none / "attention_distance.npz").is_file()


def test_rerunning_a_finished_sweep_trains_and_overwrites_nothing(sweep, capsys):
    root = sweep["root"]
    before = mtimes(root)
    main(["fit", "--config", sweep["config"], "--ckpt_path", "last"])
    assert mtimes(root) == before
    assert "4 finished (skipped)" in capsys.readouterr().err.replace("\n", " ")


def test_plot_redraws_results_and_pngs_from_saved_runs(sweep, tmp_path, capsys):
    root = sweep["root"]
    results = (root / "results.csv").read_text()
    for name in ["results.csv", "report.md", *PLOTS]:
        (root / name).unlink()
    main(["plot", str(root)])
    assert (root / "results.csv").read_text() == results
    for name in PLOTS:
        assert (root / name).is_file()
    report = (root / "report.md").read_text()
    assert all(f"`{variant}`" in report for variant in ("none", "learned_1d"))
    assert all(f"]({png.name})" in report for png in root.glob("*.png"))  # every plot there is, as an image
    assert str(root / "accuracy.png") in capsys.readouterr().out


def test_plot_on_a_folder_without_results_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "holds no ablation results" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "missing")])
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize(
    "variant,message",
    [
        (
            {"name": "typo", "overrides": {"model.init_args.backbone.init_args.pos_embd": "none"}},
            r"variant 'typo' overrides 'model.init_args.backbone.init_args.pos_embd', which is not a key.*"
            r"did you mean model.init_args.backbone.init_args.pos_embed",
        ),
        (
            {"name": "bad_kind", "overrides": {POS: "learned"}},
            r"variant 'bad_kind'.*pos_embed: expected one of none, learned_1d, .*rope_2d; got 'learned'",
        ),
        (
            {"name": "narrow", "overrides": {POS: "sincos_2d", "model.init_args.backbone.init_args.embed_dim": 30}},
            r"variant 'narrow'.*divisible by 4",
        ),
        ({"name": "bad_type", "overrides": {"trainer.max_epochs": "many"}}, r"variant 'bad_type'.*do not parse"),
        ({"name": "own_dir", "overrides": {"trainer.default_root_dir": "x"}}, r"which the sweep sets for every run"),
    ],
)
def test_bad_variant_is_an_error_before_any_run_starts(tmp_path, capsys, variant, message):
    good = {"name": "ok", "overrides": {POS: "learned_1d"}}
    config = write_config(tmp_path / "a.yaml", sweep_config(tmp_path / "out", variants=[good, variant], seeds=[0]))
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", config])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert pytest.importorskip("re").search(message, err.replace("\n", " ")), err
    assert not (tmp_path / "out").exists()  # nothing written, not even sweep.yaml: the fixed command starts afresh


def test_missing_data_is_an_error_before_any_run_starts(tmp_path, capsys):
    config = sweep_config(tmp_path / "out", seeds=[0])
    config["data"] = {
        "class_path": "lit_vit.data.CIFARDataModule",
        "init_args": {"root": str(tmp_path / "data"), "download": False},
    }
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", write_config(tmp_path / "a.yaml", config)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.replace("\n", " ")
    assert "variant 'none'" in err and "cifar10 not found: missing data_batch_1" in err, err
    assert "--data.init_args.root" in err
    assert not (tmp_path / "out").exists()


def test_ablation_is_an_option_of_fit_and_shows_in_print_config(tmp_path, capsys):
    config = write_config(tmp_path / "a.yaml", sweep_config(tmp_path / "out"))
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["ablation"]["seeds"] == [0, 1]
    assert printed["ablation"]["variants"][1]["overrides"] == {POS: "learned_1d", "model.init_args.lr": 0.002}
    with pytest.raises(SystemExit):
        main(["validate", "--config", config])
    assert "validate does not run ablation sweeps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--ckpt_path", str(tmp_path / "x.ckpt")])
    assert "cannot be used with an ablation sweep" in capsys.readouterr().err


def test_mean_attention_distance_and_rollout_on_known_attention():
    grid, patch, n = (2, 2), (4, 4), 4
    to_self = torch.eye(n + 1)[None, None]  # class token + 4 patches, every token attends to itself
    assert np.allclose(mean_attention_distance([to_self], grid, patch, num_prefix=1), 0.0)
    uniform = torch.full((1, 1, n, n), 1 / n)  # no class token; distances: 0, 4, 4, 4*sqrt(2) from every patch
    expected = (0 + 4 + 4 + 4 * 2**0.5) / 4
    assert np.allclose(mean_attention_distance([uniform, uniform], grid, patch, num_prefix=0), expected)
    attn = torch.zeros(1, 2, n + 1, n + 1)
    attn[:, :, :, 3] = 1.0  # everything attends to patch 2 (index 3 with the class token first)
    rollout = attention_rollout([attn], grid, num_prefix=1)
    assert rollout.shape == (1, 2, 2) and rollout[0].argmax() == 2 and rollout.max() == 1.0


def test_plot_sweep_returns_the_files_it_wrote(sweep):
    written = plot_sweep(sweep["root"])
    assert {p.name for p in written} == {"results.csv", *PLOTS, "report.md"}


def test_relative_bias_maps_are_indexed_by_the_key_offset_from_the_query():
    torch.manual_seed(0)
    model = VisionTransformer(img_size=(12, 16), patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2,
                              pos_embed="relative")  # fmt: skip
    torch.nn.init.normal_(model.pos_embed.relative_bias_table)
    maps = relative_bias_maps(model)
    assert maps.shape == (2, 5, 7)  # a 3 x 4 grid: offsets -2..2 rows, -3..3 columns
    bias = model.pos_embed.attn_bias((3, 4))[0]  # heads, 1 + 12, 1 + 12 (class token first)
    for q, k in [(0, 11), (11, 0), (5, 6), (7, 7), (2, 9)]:
        (qr, qc), (kr, kc) = divmod(q, 4), divmod(k, 4)
        for h in range(2):
            assert maps[h, 2 + kr - qr, 3 + kc - qc] == pytest.approx(bias[h, 1 + q, 1 + k].item())
    assert relative_bias_maps(VisionTransformer(img_size=8, patch_size=4, embed_dim=16, depth=1, num_heads=2)) is None
