"""One acceptance command for a machine with a GPU (benchmarks/gpu_check.sh OUT_DIR): in about 8 minutes on one GPU,

- ViT-S/16 and ViT-B/16 training throughput and MFU at bf16-mixed against timm, eager and with torch.compile;
- the CIFAR-10 position-embedding ablation recipe (experiments/cifar10/ablation_pos.yaml, one run) for a few hundred
  steps on CIFAR-10-format files written here (random images: a speed check, not an accuracy one), bf16-mixed, the
  data on the device, with images/s and the data share of a step;
- one-GPU FSDP (lit_vit.strategies.TransformerFSDP) steps of ViT-L/16 (experiments/imagenet/vit_l16_fsdp.yaml) on a
  generated JPEG tree;
- a ViLT-B/32 training step (image-text matching) at bf16-mixed;

and writes OUT_DIR/summary.md and OUT_DIR/gpu_check.json. Each check runs in its own process (a new one on a GPU, a
fork of this one in CPU mode) with its own time limit, so one failure (out of memory, a compiler missing) is reported
and the others still run. Without a GPU (or with --cpu) the same checks run in a reduced CPU mode (small sizes, no
torch.compile, no FSDP: torch's FSDP needs GPUs), so the command is tested where no GPU is, and works the first time
one is lent.
"""

import argparse
import json
import os
import pickle
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lit_vit.processes import fork_is_safe

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Check:
    name: str
    what: str
    argv: list[str]  # after `python -m lit_vit`
    timeout_s: int
    reads: str  # "bench" (a bench record in bench.jsonl) or "profile" (a StepProfile JSON)
    output: Path | None = None
    notes: list[str] = field(default_factory=list)


def write_cifar10(root: Path, train: int, test: int) -> Path:
    """CIFAR-10's python batches (data_batch_1..5, test_batch, batches.meta) of random images and labels."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_batch = -(-train // 5)
    for name, n in [*((f"data_batch_{i}", per_batch) for i in range(1, 6)), ("test_batch", test)]:
        batch = {
            "batch_label": name,
            "labels": rng.integers(0, 10, n).tolist(),
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, fh, protocol=2)
    return root


def profile_callback(path: Path, skip: int) -> str:
    spec = {"class_path": "lit_vit.callbacks.StepProfile", "init_args": {"skip": skip, "output": str(path)}}
    return f"--trainer.callbacks={json.dumps([spec])}"  # replaces the recipe's callbacks (probes, artifacts)


def plan(out: Path, gpu: bool) -> list[Check]:
    bench_out = out / "bench.jsonl"
    device = ["--device", "cuda"] if gpu else ["--device", "cpu"]
    checks: list[Check] = []
    for variant in ("S", "B"):
        if gpu:
            size = ["--backbone.img_size", "224", "--batch-size", "128" if variant == "S" else "64"]
            timing = ["--warmup", "3", "--repeats", "10", "--steps", "2"]
        else:
            size = ["--backbone.img_size", "32", "--backbone.depth", "2", "--batch-size", "2"]  # 2 of the 12 blocks
            timing = ["--warmup", "1", "--repeats", "2"]
        base = ["bench", "--backbone.variant", variant, "--backbone.patch_size", "16", *size, *timing, *device,
                "--precision", "bf16-mixed", "--mode", "train", "--output", str(bench_out)]  # fmt: skip
        what = f"ViT-{variant}/16 training step, bf16-mixed, against timm"
        cpu_note = [] if gpu else ["CPU mode: 2 of the 12 blocks at 32 px, batch 2"]
        checks.append(
            Check(f"vit_{variant.lower()}16", what, [*base, "--label", "eager"], 120, "bench", bench_out, cpu_note)
        )
        if gpu:
            checks.append(
                Check(
                    f"vit_{variant.lower()}16_compile",
                    what + ", torch.compile",
                    [*base, "--compile", "--label", "compile"],
                    240,
                    "bench",
                    bench_out,
                )  # fmt: skip
            )
    cifar = out / "cifar"
    cifar_profile = out / "cifar_step_profile.json"
    steps, skip = (300, 20) if gpu else (3, 1)  # CPU: bf16 autocast is slow there (~1 s a step at batch 2)
    trainer = ["--trainer.accelerator", "gpu" if gpu else "cpu", "--trainer.devices", "1"]
    checks.append(
        Check(
            "cifar10_ablation",
            f"CIFAR-10 ablation recipe (learned_1d), {steps} steps on written CIFAR-10 files, bf16-mixed, data on the "
            "device",
            [
                "fit",
                "--config",
                str(REPO / "experiments/cifar10/ablation_pos.yaml"),
                "--ablation",
                "null",
                f"--trainer.default_root_dir={out / 'cifar_run'}",
                f"--data.init_args.root={cifar}",
                f"--data.init_args.val_size={1000 if gpu else 50}",
                "--data.init_args.num_workers=0",
                "--data.init_args.device_cache=auto",
                f"--trainer.max_steps={steps}",
                "--trainer.limit_val_batches=0",
                "--trainer.num_sanity_val_steps=0",
                "--trainer.enable_checkpointing=false",
                "--trainer.precision=bf16-mixed",
                *trainer,
                profile_callback(cifar_profile, skip),
                *([] if gpu else ["--data.init_args.batch_size=2"]),
            ],  # fmt: skip
            240 if gpu else 120,
            "profile",
            cifar_profile,
            [] if gpu else [f"CPU mode: {steps} steps at batch 2"],
        )
    )
    jpegs = out / "jpegs"
    fsdp_profile = out / "fsdp_step_profile.json"
    fsdp = [
        "fit", "--config", str(REPO / "experiments/imagenet/vit_l16_fsdp.yaml"),
        f"--trainer.default_root_dir={out / 'fsdp_run'}", f"--data.init_args.root={jpegs}",
        "--data.init_args.num_workers=4" if gpu else "--data.init_args.num_workers=0",
        "--trainer.max_steps=4", "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
        "--trainer.enable_checkpointing=false", *trainer, profile_callback(fsdp_profile, 1),
    ]  # fmt: skip
    if gpu:
        fsdp += ["--data.init_args.batch_size=32"]
        notes = []
    else:
        fsdp += ["--trainer.strategy=auto", "--model.init_args.backbone.init_args.variant=Ti",
                 "--data.init_args.img_size=64", "--model.init_args.backbone.init_args.img_size=64",
                 "--data.init_args.batch_size=4",
                 "--trainer.precision=32-true"]  # fmt: skip
        notes = ["CPU mode: ViT-Ti/16 at 64 px with the single-device strategy (torch's FSDP needs GPUs)"]
    checks.append(
        Check(
            "fsdp_vit_l16",
            "ViT-L/16 FSDP (TransformerFSDP, one GPU) training steps of the ImageNet recipe on generated JPEGs",
            fsdp,
            240 if gpu else 120,
            "profile",
            fsdp_profile,
            notes,
        )
    )
    vilt = ["--backbone", "lit_vit.models.vilt.ViLT", "--backbone.variant", "B", "--backbone.patch_size", "32"]
    if gpu:
        vilt += ["--backbone.img_size", "384", "--batch-size", "32", "--warmup", "3", "--repeats", "5"]
    else:
        vilt[2:4] = ["--backbone.variant", "Ti"]
        vilt += ["--backbone.img_size", "64", "--backbone.depth", "2", "--batch-size", "2", "--warmup", "1",
                 "--repeats", "2"]  # fmt: skip
    checks.append(
        Check(
            "vilt_b32",
            "ViLT-B/32 training step (image-text matching, 384 px), bf16-mixed",
            [
                "bench",
                *vilt,
                *device,
                "--precision",
                "bf16-mixed",
                "--mode",
                "train",
                "--no-timm",
                "--output",
                str(bench_out),
                "--label",
                "vilt_b32",
            ],  # fmt: skip
            120,
            "bench",
            bench_out,
            [] if gpu else ["CPU mode: ViLT-Ti/32 (width 192), depth 2, 64 px"],
        )
    )
    return checks


def run_check(check: Check, log_dir: Path, deadline: float, fork: bool = False) -> dict:
    """Run one check as `python -m lit_vit <argv>` in its own process: a new one (GPU mode: one failure or leak cannot
    touch the next check), or with `fork` a fork of this process, which has imported Lightning once for all checks."""
    timeout = max(1, min(check.timeout_s, int(deadline - time.monotonic())))
    before = len(check.output.read_text().splitlines()) if check.reads == "bench" and check.output.exists() else 0
    env = {"NO_ALBUMENTATIONS_UPDATE": "1", "PYTHONUNBUFFERED": "1"}
    log = log_dir / f"{check.name}.log"
    t0 = time.monotonic()
    if fork:
        rc = _run_forked(check.argv, env, log, timeout)
    else:
        with log.open("w") as fh:
            try:
                rc = subprocess.run(
                    [sys.executable, "-m", "lit_vit", *check.argv], cwd=REPO, env={**os.environ, **env}, stdout=fh,
                    stderr=subprocess.STDOUT, timeout=timeout,
                ).returncode  # fmt: skip
            except subprocess.TimeoutExpired:
                rc = None
    result = {"name": check.name, "what": check.what, "command": ["python", "-m", "lit_vit", *check.argv],
              "wall_s": round(time.monotonic() - t0, 1), "log": str(log), "notes": check.notes,
              "process": "fork" if fork else "new"}  # fmt: skip
    if rc != 0:
        tail = [line for line in log.read_text(errors="replace").strip().splitlines() if line.strip()][-3:]
        result.update(status="timeout" if rc is None else "failed", exit_code=rc, error=" | ".join(tail))
        return result
    if check.reads == "bench":
        records = [json.loads(line) for line in check.output.read_text().splitlines()[before:] if line.strip()]
        train = records[-1]["results"]["train"]
        ours, timm = train["lit_vit"], train.get("timm")
        result.update(
            status="ok",
            images_per_s=ours["images_per_s"],
            step_ms=ours["step_time_ms"],
            mfu=ours["mfu"],
            peak_memory_mb=ours["peak_memory_mb"],
            timm_images_per_s=timm["images_per_s"] if timm else None,
            ratio_vs_timm=train.get("ratio_paired_median"),
        )
    else:
        profile = json.loads(check.output.read_text())
        phases = profile.get("phases", {})
        result.update(
            status="ok" if profile.get("steps") else "failed",
            images_per_s=profile.get("images_per_s"),
            step_ms=profile.get("step_ms_mean"),
            data_share=phases.get("data", {}).get("share"),
            steps=profile.get("steps"),
        )
    return result


def _run_forked(argv: list[str], env: dict[str, str], log: Path, timeout: float) -> int | None:
    """`python -m lit_vit <argv>` in a fork (lit_vit.processes); None when it ran past `timeout` (then killed)."""
    from lit_vit.cli import main as cli_main
    from lit_vit.processes import fork_guarded

    def command() -> None:
        os.chdir(REPO)
        cli_main(argv)

    proc = fork_guarded(command, env, log)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def summary_md(record: dict) -> str:
    env = record["environment"]
    lines = [
        f"# lit_vit GPU check ({record['mode']} mode)",
        "",
        f"{record['date']}, {env['device_name']}, torch {env['torch']}, lit_vit commit {env['commit'] or 'unknown'}; "
        f"total {record['wall_s']:.0f} s. {record['passed']} of {len(record['checks'])} checks passed.",
        "",
        "| check | status | img/s | step ms | MFU | timm img/s | lit_vit / timm | data share | wall s | what |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in record["checks"]:
        mfu = fmt(r.get("mfu"), ".1%") if r.get("mfu") is not None else "-"
        lines.append(
            f"| {r['name']} | {r['status']} | {fmt(r.get('images_per_s'), '.1f')} | {fmt(r.get('step_ms'), '.1f')} | "
            f"{mfu} | {fmt(r.get('timm_images_per_s'), '.1f')} | {fmt(r.get('ratio_vs_timm'), '.3f')} | "
            f"{fmt(r.get('data_share'), '.1%')} | {r['wall_s']} | {r['what']} |"
        )
    notes = [f"- {r['name']}: {n}" for r in record["checks"] for n in r.get("notes", [])]
    errors = [f"- {r['name']} ({r['status']}): {r.get('error', '')} (log: {r['log']})" for r in record["checks"]
              if r["status"] != "ok"]  # fmt: skip
    if notes:
        lines += ["", "Notes:", *notes]
    if errors:
        lines += ["", "Failures:", *errors]
    lines += ["", "Each check's command and full output: gpu_check.json and logs/."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/gpu_check.sh",
        description="lit_vit's GPU acceptance checks (about 8 minutes on one GPU); a reduced CPU mode without one.",
    )
    parser.add_argument("out_dir", help="folder for summary.md, gpu_check.json, logs/ and the generated data")
    parser.add_argument("--cpu", action="store_true", help="the reduced CPU mode even when a GPU is visible")
    parser.add_argument("--only", nargs="+", default=None, help="run only these checks (names as in summary.md)")
    parser.add_argument("--budget-s", type=int, default=480, help="stop starting checks after this many seconds")
    args = parser.parse_args(argv)
    import torch

    gpu = torch.cuda.is_available() and not args.cpu
    out = Path(args.out_dir).resolve()
    if out.exists() and any(out.iterdir()):
        print(f"error: {out} is not empty; give a new or empty OUT_DIR (nothing was written)", file=sys.stderr)
        return 2
    checks = plan(out, gpu)
    names = [c.name for c in checks]
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            print(f"error: --only {' '.join(unknown)}: no such check; choose from {', '.join(names)}", file=sys.stderr)
            return 2
        checks = [c for c in checks if c.name in args.only]
    (out / "logs").mkdir(parents=True)
    t0 = time.monotonic()
    deadline = t0 + args.budget_s
    if any(c.name == "cifar10_ablation" for c in checks):
        write_cifar10(out / "cifar", train=10000 if gpu else 200, test=1000 if gpu else 100)
    if any(c.name == "fsdp_vit_l16" for c in checks):
        from lit_vit.bench.data import write_jpeg_tree

        write_jpeg_tree(out / "jpegs", 256 if gpu else 16, 256 if gpu else 72)
    # CPU mode: each check in a fork of this process, which imports Lightning once (not once per check); a GPU's
    # checks each get a new process (CUDA must not be set up before a fork, and one check's failure stays its own)
    fork = not gpu and fork_is_safe()
    if fork:
        import lit_vit.cli  # noqa: F401  (what every fork would import again)
    results = []
    for check in checks:
        if time.monotonic() >= deadline:
            results.append({"name": check.name, "what": check.what, "status": "skipped", "wall_s": 0,
                            "error": f"--budget-s {args.budget_s} spent", "log": "-", "notes": []})  # fmt: skip
            continue
        print(f"gpu_check: {check.name} ...", flush=True)
        results.append(run_check(check, out / "logs", deadline, fork))
        print(f"gpu_check: {check.name} {results[-1]['status']} ({results[-1]['wall_s']} s)", flush=True)
    from lit_vit.ablation.results import machine_info

    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "mode": "gpu" if gpu else "cpu",
        "environment": {
            "device_name": torch.cuda.get_device_name(0) if gpu else platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "commit": machine_info().get("git_commit"),
        },
        "wall_s": time.monotonic() - t0,
        "passed": sum(r["status"] == "ok" for r in results),
        "checks": results,
    }
    (out / "gpu_check.json").write_text(json.dumps(record, indent=1))
    (out / "summary.md").write_text(summary_md(record))
    print((out / "summary.md").read_text())
    return 0 if record["passed"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
