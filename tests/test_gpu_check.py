"""benchmarks/gpu_check.sh: the GPU acceptance checks, run here in their reduced CPU mode."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from lit_vit.bench.gpu_check import main, plan, summary_md, write_cifar10
from lit_vit.cli import main as cli_main
from lit_vit.data import CIFARDataModule
from tests.conftest import tiny_fit_args

REPO = Path(__file__).resolve().parents[1]


def test_written_cifar10_files_are_read_by_the_cifar_datamodule(tmp_path):
    write_cifar10(tmp_path, train=50, test=20)
    dm = CIFARDataModule(root=str(tmp_path), name="cifar10", val_size=10, img_size=32, batch_size=8, num_workers=0)
    dm.setup("fit")
    assert dm.num_classes == 10
    assert len(dm.train_dataloader().dataset) + 10 == 50  # 5 batches of 10 images, 10 of them held out


def test_plan_has_every_check_on_gpu_and_the_reduced_set_on_cpu(tmp_path):
    gpu = [c.name for c in plan(tmp_path, gpu=True)]
    cpu = [c.name for c in plan(tmp_path, gpu=False)]
    assert gpu == ["vit_s16", "vit_s16_compile", "vit_b16", "vit_b16_compile", "cifar10_ablation", "fsdp_vit_l16",
                   "vilt_b32"]  # fmt: skip
    assert cpu == ["vit_s16", "vit_b16", "cifar10_ablation", "fsdp_vit_l16", "vilt_b32"]
    fsdp = next(c for c in plan(tmp_path, gpu=True) if c.name == "fsdp_vit_l16")
    assert not any("strategy" in a for a in fsdp.argv)  # the recipe's TransformerFSDP stays on a GPU


def test_refuses_a_non_empty_out_dir_and_unknown_checks(tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("mine")
    assert main([str(tmp_path / "old"), "--cpu"]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert (tmp_path / "old" / "keep.txt").read_text() == "mine"
    assert main([str(tmp_path / "new"), "--cpu", "--only", "vit_x"]) == 2
    assert "no such check; choose from vit_s16" in capsys.readouterr().err


def test_summary_lists_failures_with_their_logs():
    record = {
        "mode": "gpu", "date": "2026-12-04T12:00:00+00:00", "wall_s": 400.0, "passed": 1,
        "environment": {"device_name": "NVIDIA H200", "torch": "2.14.1", "commit": "abc"},
        "checks": [
            {"name": "vit_s16", "what": "ViT-S/16", "status": "ok", "images_per_s": 2500.0, "step_ms": 51.2,
             "mfu": 0.41, "timm_images_per_s": 2450.0, "ratio_vs_timm": 1.02, "wall_s": 30.0, "log": "l", "notes": []},
            {"name": "fsdp_vit_l16", "what": "FSDP", "status": "failed", "wall_s": 9.0, "log": "logs/fsdp.log",
             "error": "CUDA out of memory", "notes": []},
        ],
    }  # fmt: skip
    text = summary_md(record)
    assert "| vit_s16 | ok | 2500.0 | 51.2 | 41.0% | 2450.0 | 1.020 |" in text
    assert "- fsdp_vit_l16 (failed): CUDA out of memory (log: logs/fsdp.log)" in text
    assert "1 of 2 checks passed" in text


def test_mixed_precision_with_gradient_clipping_trains(run_dir):
    # the GPU recipes' combination (bf16-mixed + gradient_clip_val), first run by gpu_check: Lightning refuses to clip
    # with a fused AdamW under mixed precision, so ImageClassifier takes the foreach kernel there
    cli_main(tiny_fit_args(run_dir, "--trainer.precision=bf16-mixed", "--trainer.gradient_clip_val=1.0",
                           limit_batches=2))  # fmt: skip
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow
def test_cpu_mode_runs_every_check_and_writes_the_summary(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(REPO / "benchmarks/gpu_check.sh"), str(out), "--cpu", "--budget-s", "900"],
        capture_output=True, text=True, env=env, timeout=1200,
    )  # fmt: skip
    record = json.loads((out / "gpu_check.json").read_text())
    assert proc.returncode == 0, (out / "summary.md").read_text()
    assert record["mode"] == "cpu" and record["passed"] == 5
    by_name = {r["name"]: r for r in record["checks"]}
    assert by_name["vit_s16"]["images_per_s"] > 0 and by_name["vit_s16"]["timm_images_per_s"] > 0
    assert 0.0 <= by_name["cifar10_ablation"]["data_share"] < 1.0 and by_name["cifar10_ablation"]["steps"] == 2
    assert by_name["fsdp_vit_l16"]["steps"] == 3
    assert {r["process"] for r in record["checks"]} == {"fork"}  # one import of Lightning for all checks
    summary = (out / "summary.md").read_text()
    assert "5 of 5 checks passed" in summary and "| vilt_b32 | ok |" in summary
