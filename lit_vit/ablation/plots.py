"""Plots of an ablation sweep, drawn only from what the runs saved (results, metrics.csv, artifacts/*.npz).

    python -m lit_vit plot <sweep dir>

rewrites `<sweep dir>/results.csv` from the finished runs and draws into the sweep folder:

- accuracy.png: final validation top-1 per variant, mean +- std over seeds, every seed as a dot; next to it the
  5-shot linear probe (FewShotEval) when the runs have one;
- curves.png: validation top-1 against epoch per variant (mean over seeds, min-max band);
- compute.png: final validation top-1 against training compute, one point per variant (mean +- std over seeds), a line
  per backbone class: the shape of the ViT paper's Figure 5; drawn when the runs measured their compute
  (ThroughputLogger's train_flops, which every sweep run has) and it differs between variants;
- pos_embed_similarity.png, attention_distance.png, attention_rollout.png: each variant's artifacts side by side
  (from its first seed); relative_bias.png: the learned bias maps per head of the relative variants;
- report.md: the results, the paper's numbers, every plot, the variants' config differences, the machine and the
  commands to reproduce (lit_vit/ablation/report.py).
"""

import argparse
from pathlib import Path

import numpy as np
import yaml

from lit_vit.ablation.report import write_report
from lit_vit.ablation.results import collect, mean_std, read_results, run_dir, validation_curve, write_results
from lit_vit.callbacks.artifacts import ARTIFACTS_DIR
from lit_vit.errors import ConfigError
from lit_vit.plotting import (
    draw_distance,
    draw_relative_bias_heads,
    draw_rollout,
    draw_similarity,
    save_figure,
    show_image,
)


def _variant_order(sweep_dir: Path) -> list[str]:
    path = sweep_dir / "sweep.yaml"
    if not path.is_file():
        return []
    ablation = (yaml.safe_load(path.read_text()) or {}).get("ablation") or {}
    return [v["name"] for v in ablation.get("variants") or []]


def _by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["variant"], []).append(row)
    return out


def _accuracy_panel(ax, groups: dict[str, list[dict]], column: str, label: str) -> None:
    """One variant per x position: mean +- std of `column` (a fraction) over seeds, every seed as a dot."""
    names = list(groups)
    for i, name in enumerate(names):
        accs = [100 * r[column] for r in groups[name] if r.get(column) is not None]
        if not accs:
            continue
        mean, std = mean_std(accs)
        ax.errorbar(i, mean, yerr=std, fmt="s", color=f"C{i}", capsize=6, markersize=8, zorder=3)
        ax.scatter(np.full(len(accs), i) + 0.12, accs, color=f"C{i}", s=14, alpha=0.6, zorder=2)
        ax.annotate(f"{mean:.1f}\n+-{std:.1f}", (i, mean + std), textcoords="offset points", xytext=(0, 6),
                    ha="center", fontsize=8)  # fmt: skip
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_xlim(-0.6, len(names) - 0.4)
    low, high = ax.get_ylim()
    ax.set_ylim(low, high + 0.12 * (high - low))
    ax.set_ylabel(label)
    ax.grid(axis="y", alpha=0.3)


def plot_accuracy(sweep_dir: Path, rows: list[dict]) -> Path:
    """Final val top-1 per variant; with a second panel of the 5-shot linear probe when the runs have one (the ViT
    paper's ablation metric, Table 8)."""
    import matplotlib.pyplot as plt

    groups = _by_variant(rows)
    panels = [("final_val_acc1", "final val top-1 (%)")]
    if any(r.get("fewshot_5shot") is not None for r in rows):
        panels.append(("fewshot_5shot", "5-shot linear probe top-1 (%)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(len(panels) * (1.3 * len(groups) + 2.5), 3.8), squeeze=False)
    for ax, (column, label) in zip(axes[0], panels):
        _accuracy_panel(ax, groups, column, label)
    seeds = sorted({r["seed"] for r in rows})
    title = f"{sweep_dir.name}: mean +- std over {len(seeds)} seed(s) {seeds}"
    if len(panels) == 1:
        axes[0, 0].set_title(title, fontsize=10)
    else:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
    return save_figure(fig, sweep_dir / "accuracy.png", dpi=130)


def plot_curves(sweep_dir: Path, rows: list[dict]) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for i, (name, group) in enumerate(_by_variant(rows).items()):
        curves = [validation_curve(run_dir(sweep_dir, name, r["seed"])) for r in group]
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        epochs = [p["epoch"] + 1 for p in curves[0][:n]]
        accs = np.array([[100 * p["acc1"] for p in c[:n]] for c in curves])
        ax.plot(epochs, accs.mean(0), color=f"C{i}", label=f"{name} ({len(curves)} seeds)")
        ax.fill_between(epochs, accs.min(0), accs.max(0), color=f"C{i}", alpha=0.15)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val top-1 (%)")
    ax.set_title(f"{sweep_dir.name}: validation top-1 (mean over seeds, band = min..max)", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no curves when the runs' metrics.csv files are gone
        ax.legend(fontsize=8)
    return save_figure(fig, sweep_dir / "curves.png", dpi=130)


_FLOP_UNITS = ((1e18, "EFLOPs"), (1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1.0, "FLOPs"))


def _backbone_name(sweep_dir: Path, variant: str, seed: int) -> str:
    """The backbone class of a run (from its config.yaml), e.g. VisionTransformer or HybridViT; "" if unknown."""
    path = run_dir(sweep_dir, variant, seed) / "config.yaml"
    if not path.is_file():
        return ""
    model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
    backbone = (model.get("init_args") or {}).get("backbone") or {}
    return str(backbone.get("class_path", "")).rsplit(".", 1)[-1]


def plot_compute(sweep_dir: Path, rows: list[dict]) -> Path | None:
    """Accuracy against training compute (the ViT paper's Figure 5): one point per variant (mean +- std over seeds
    of both), variants of one backbone class joined by a line in order of compute; None when a run has no measured
    compute, or when every run spent the same compute (within 1%: e.g. a position-embedding ablation, where the plot
    would be one vertical line of points)."""
    import matplotlib.pyplot as plt

    if not rows or any(r.get("train_flops") is None for r in rows):
        return None
    spent = [r["train_flops"] for r in rows]
    if max(spent) <= 1.01 * min(spent):
        return None
    scale, unit = next((s, u) for s, u in _FLOP_UNITS if max(r["train_flops"] for r in rows) >= s)
    points: dict[str, list[tuple[float, float, float, float, str]]] = {}  # family -> (flops, std, acc, std, variant)
    for name, group in _by_variant(rows).items():
        flops = mean_std([r["train_flops"] / scale for r in group])
        acc = mean_std([100 * r["final_val_acc1"] for r in group])
        family = _backbone_name(sweep_dir, name, group[0]["seed"]) or name
        points.setdefault(family, []).append((*flops, *acc, name))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, (family, pts) in enumerate(points.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[2] for p in pts], "-", color=f"C{i}", alpha=0.5)
        for f, f_std, a, a_std, name in pts:
            ax.errorbar(f, a, xerr=f_std, yerr=a_std, fmt="o", color=f"C{i}", capsize=4, markersize=7)
            ax.annotate(name, (f, a), textcoords="offset points", xytext=(6, -12), fontsize=7)
        ax.plot([], [], "o-", color=f"C{i}", label=family)
    low = min(r["train_flops"] for r in rows) / scale
    high = max(r["train_flops"] for r in rows) / scale
    ax.set_xscale("log")
    ax.set_xlim(low / 1.5, high * 2.5)  # room for the labels right of the points
    seeds = sorted({r["seed"] for r in rows})
    ax.set_xlabel(f"training compute ({unit}; measured: FLOPs per image x images trained)")
    ax.set_ylabel("final val top-1 (%)")
    ax.set_title(f"{sweep_dir.name}: accuracy vs training compute, mean +- std over seeds {seeds}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, sweep_dir / "compute.png", dpi=130)


def _artifacts(sweep_dir: Path, rows: list[dict], name: str) -> dict[str, dict]:
    """variant -> the npz contents of `name` from the variant's first seed that has it."""
    found = {}
    for variant, group in _by_variant(rows).items():
        for r in sorted(group, key=lambda r: r["seed"]):
            path = run_dir(sweep_dir, variant, r["seed"]) / ARTIFACTS_DIR / f"{name}.npz"
            if path.is_file():
                with np.load(path) as data:
                    found[variant] = {k: data[k] for k in data.files}
                break
    return found


def plot_similarity(sweep_dir: Path, rows: list[dict]) -> Path | None:
    import matplotlib.pyplot as plt

    found = _artifacts(sweep_dir, rows, "pos_embed_similarity")
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(3.2 * len(found), 3.6), squeeze=False)
    image = None
    for ax, (variant, data) in zip(axes[0], found.items()):
        image = draw_similarity(ax, data["similarity"], variant)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.02, label="cosine similarity")
    fig.suptitle("position embedding similarity (each small map: one patch vs all patches)", fontsize=10)
    return save_figure(fig, sweep_dir / "pos_embed_similarity.png", dpi=130)


def plot_relative_bias(sweep_dir: Path, rows: list[dict]) -> Path | None:
    import matplotlib.pyplot as plt

    found = _artifacts(sweep_dir, rows, "relative_bias")
    if not found:
        return None
    heads = max(len(d["bias"]) for d in found.values())
    vmax = max(float(np.abs(d["bias"]).max()) for d in found.values()) or 1.0
    fig, axes = plt.subplots(len(found), heads, figsize=(2.2 * heads + 1, 2.4 * len(found)), squeeze=False)
    image = None
    for row, (variant, data) in zip(axes, found.items()):
        image = draw_relative_bias_heads(row, data["bias"], vmax, f"{variant}: ")
    for ax in axes[-1]:
        ax.set_xlabel("key col - query col", fontsize=7)
    fig.colorbar(image, ax=list(axes.ravel()), fraction=0.03, label="attention logit bias")
    fig.suptitle("learned relative position bias per head (+ = the query's own position)", fontsize=10, y=1.04)
    return save_figure(fig, sweep_dir / "relative_bias.png", dpi=130)


def plot_distance(sweep_dir: Path, rows: list[dict]) -> Path | None:
    import matplotlib.pyplot as plt

    found = _artifacts(sweep_dir, rows, "attention_distance")
    if not found:
        return None
    top = max(float(d["max_distance"]) for d in found.values())
    fig, axes = plt.subplots(1, len(found), figsize=(3 * len(found), 3), squeeze=False, sharey=True)
    for ax, (variant, data) in zip(axes[0], found.items()):
        draw_distance(ax, data["distance"], variant, max_distance=top)
    fig.suptitle("mean attention distance per head (dots) against depth", fontsize=10, y=1.04)  # above the titles
    return save_figure(fig, sweep_dir / "attention_distance.png", dpi=130)


def plot_rollout(sweep_dir: Path, rows: list[dict]) -> Path | None:
    import matplotlib.pyplot as plt

    found = _artifacts(sweep_dir, rows, "attention_rollout")
    if not found:
        return None
    n = min(len(d["images"]) for d in found.values())
    fig, axes = plt.subplots(len(found) + 1, n, figsize=(1.3 * n + 1, 1.35 * (len(found) + 1)), squeeze=False)
    first = next(iter(found.values()))
    for j in range(n):
        show_image(axes[0, j], first["images"][j])
    axes[0, 0].set_ylabel("input", fontsize=8)
    for i, (variant, data) in enumerate(found.items(), 1):
        for j in range(n):
            draw_rollout(axes[i, j], data["images"][j], data["rollout"][j])
        axes[i, 0].set_ylabel(variant, fontsize=8)
    fig.suptitle("attention rollout on validation images", fontsize=10)
    return save_figure(fig, sweep_dir / "attention_rollout.png", dpi=130)


def plot_sweep(sweep_dir: str | Path) -> list[Path]:
    """Rewrite results.csv from the finished runs, draw every plot and write report.md; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ConfigError(f"{sweep_dir} is not a folder; give the default_root_dir of an ablation sweep")
    finished = collect(sweep_dir, _variant_order(sweep_dir))
    if finished:
        write_results(sweep_dir, finished)
    rows = read_results(sweep_dir)
    written = [sweep_dir / "results.csv", plot_accuracy(sweep_dir, rows), plot_curves(sweep_dir, rows)]
    artifact_plots = (plot_compute, plot_similarity, plot_relative_bias, plot_distance, plot_rollout)  # None: not saved
    written += [p for p in (plot(sweep_dir, rows) for plot in artifact_plots) if p]
    return [*written, write_report(sweep_dir, rows)]  # last: it links every PNG in the folder


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_vit plot",
        description="Redraw an ablation sweep's results.csv and plots from its saved runs (no training).",
    )
    parser.add_argument("sweep_dir", help="the sweep's trainer.default_root_dir, e.g. runs/ablation_pos")
    args = parser.parse_args(argv)
    for path in plot_sweep(args.sweep_dir):
        print(path)
