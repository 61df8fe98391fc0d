"""What a finished sweep run leaves behind (done.json) and the sweep's results.csv, read back from the run folders."""

import csv
import functools
import json
import math
from pathlib import Path
from typing import Any

from lit_vit.errors import ConfigError
from lit_vit.files import write_text_atomic

DONE_FILE = "done.json"
RESULTS_FILE = "results.csv"
RESULT_COLUMNS = [
    "variant",
    "seed",
    "best_val_acc1",
    "best_val_acc5",
    "best_epoch",
    "final_val_acc1",
    "final_val_acc5",
    "final_val_loss",
    "min_val_loss",
    "epochs",
    "steps",
    "params",
    "train_images_per_s",
    "wall_s",
    "train_flops",
]


def run_dir(sweep_dir: Path, variant: str, seed: int) -> Path:
    return Path(sweep_dir) / variant / f"seed={seed}"


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


def validation_curve(run: Path) -> list[dict[str, float]]:
    """Per validation: epoch, step, val/acc1, val/acc5, val/loss from `<run>/metrics.csv` (in logging order)."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    curve = []
    for row in rows:
        acc1 = _float(row.get("val/acc1"))
        if acc1 is None:
            continue
        curve.append(
            {
                "epoch": int(float(row.get("epoch") or 0)),
                "step": int(float(row.get("step") or 0)),
                "acc1": acc1,
                "acc5": _float(row.get("val/acc5")),
                "loss": _float(row.get("val/loss")),
            }
        )
    return curve


def fewshot_result(run: Path) -> dict[str, float]:
    """The last few-shot evaluation of a run (FewShotEval's `fewshot/<k>shot` in metrics.csv) as
    {"fewshot_<k>shot": accuracy}, k ascending; empty when the run had no FewShotEval."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if any(k.startswith("fewshot/") and v for k, v in r.items())]
    if not rows:
        return {}
    found = {k.removeprefix("fewshot/"): _float(v) for k, v in rows[-1].items() if k.startswith("fewshot/")}
    return {f"fewshot_{k}": found[k] for k in sorted(found, key=_shots) if found[k] is not None}


def _shots(column: str) -> int:
    """k of a few-shot column name ("5shot", "fewshot_5shot")."""
    return int(column.removeprefix("fewshot_").removesuffix("shot"))


def fewshot_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The few-shot columns present in any row, k ascending."""
    return sorted({k for r in rows for k in r if k.startswith("fewshot_") and k.endswith("shot")}, key=_shots)


def train_flops(run: Path) -> dict[str, float]:
    """{"train_flops": the run's training compute} from the last `throughput/train_flops` in metrics.csv (logged by
    ThroughputLogger: FLOPs counted on the real model x samples trained); empty when the run had no such logger."""
    path = Path(run) / "metrics.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        values = [_float(r.get("throughput/train_flops")) for r in csv.DictReader(f)]
    values = [v for v in values if v is not None]
    return {"train_flops": values[-1]} if values else {}


def summarise_run(run: Path, variant: str, seed: int, **extra: Any) -> dict[str, Any]:
    """The results row of a finished run: best / final validation metrics from metrics.csv plus `extra`."""
    curve = validation_curve(run)
    if not curve:
        raise RuntimeError(f"{run}/metrics.csv has no validation rows: the run did not validate (check the config)")
    best = max(curve, key=lambda r: r["acc1"])
    final = curve[-1]
    losses = [r["loss"] for r in curve if r["loss"] is not None]
    return {
        "variant": variant,
        "seed": seed,
        "best_val_acc1": best["acc1"],
        "best_val_acc5": best["acc5"],
        "best_epoch": best["epoch"],
        "final_val_acc1": final["acc1"],
        "final_val_acc5": final["acc5"],
        "final_val_loss": final["loss"],
        "min_val_loss": min(losses) if losses else None,
        "epochs": final["epoch"] + 1,
        "steps": final["step"],
        **fewshot_result(run),
        **train_flops(run),
        **extra,
    }


def write_done(run: Path, row: dict[str, Any]) -> None:
    """Marks a run finished; written last (atomically), so a run without it is resumed or restarted, never skipped."""
    write_text_atomic(Path(run) / DONE_FILE, json.dumps(row, indent=2) + "\n")


def read_done(run: Path) -> dict[str, Any] | None:
    path = Path(run) / DONE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def collect(sweep_dir: Path, order: list[str] | None = None) -> list[dict[str, Any]]:
    """Rows of every finished run under `sweep_dir` (<variant>/seed=<n>/done.json), variants in `order` first."""
    rows = [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).glob(f"*/seed=*/{DONE_FILE}"))]
    rank = {name: i for i, name in enumerate(order or [])}
    return sorted(rows, key=lambda r: (rank.get(r["variant"], len(rank)), r["variant"], r["seed"]))


def write_results(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path:
    path = Path(sweep_dir) / RESULTS_FILE
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS + fewshot_columns(rows), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_results(sweep_dir: Path) -> list[dict[str, Any]]:
    """results.csv of a sweep folder (numbers parsed); a clear error when there is none."""
    path = Path(sweep_dir) / RESULTS_FILE
    if not path.is_file():
        raise ConfigError(
            f"{sweep_dir} holds no ablation results ({RESULTS_FILE} is missing and no <variant>/seed=<n>/{DONE_FILE}); "
            "give the default_root_dir of a sweep that has finished at least one run, or run it first with "
            "python -m lit_vit fit --config <ablation yaml>"
        )
    return parse_results(path)


def parse_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a results CSV (any file name, e.g. docs/ablation_pos_results.csv) with their numbers parsed."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in fewshot_columns(rows[:1]):
            row[key] = _float(row.get(key))
        for key in RESULT_COLUMNS[1:]:
            value = _float(row.get(key))
            is_int = key in ("seed", "best_epoch", "epochs", "steps", "params") and value is not None
            row[key] = int(value) if is_int else value
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo, else what platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


@functools.cache  # one `git` call per process: a sweep worker records it for each of its runs
def _git_commit() -> str | None:
    """The commit of the lit_vit checkout this code runs from (with "-dirty" when it has uncommitted changes); None
    for an installed copy outside a git checkout or without git."""
    import subprocess

    source = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "") if commit else None


def machine_info() -> dict[str, Any]:
    """Where and with what a run is trained: CPU model and cores, GPU names, torch threads, Python / torch / lightning
    / lit_vit versions and the git commit. Call it in the process that trains (its torch thread count is the run's),
    and store it with the run (e.g. in done.json): `plot` on another machine must not report its own machine."""
    import os
    import platform
    from importlib import metadata

    import torch

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": version("lightning"),
        "lit_vit": version("lit_vit"),
        "git_commit": _git_commit(),
    }
