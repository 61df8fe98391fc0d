"""report.md of an ablation sweep, and the run-result tables of README.md and docs/*.md, both from results CSVs.

`plot_sweep` (the sweep when its last run finishes, and `python -m lit_vit plot <sweep dir>`) writes
`<sweep dir>/report.md`: the results (mean +- std over seeds), the paper's numbers where the sweep is one of the ViT
paper's ablations, the plots, what each variant changes, the machine and versions the runs were trained with, wall
times, and the commands to reproduce and resume. It renders on GitHub (plain tables, relative image links).

    python -m lit_vit.ablation.report --docs            rewrite every generated table in README.md and docs/*.md
    python -m lit_vit.ablation.report --docs --check    exit 1 when one differs from its CSV (a test runs this)

A generated table sits between `<!-- table: <file in docs/> [paper=pos_embed] [compare=<file>] -->` and
`<!-- end table -->`. A results CSV (variant, seed, ... as the sweep writes it) becomes a mean +- std summary per
variant; `compare=<csv>` sets its final top-1 next to another measurement; any other CSV is shown as it is.
"""

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from lit_vit.ablation.results import collect, fewshot_columns, mean_std, parse_results, read_results
from lit_vit.config_diff import flatten
from lit_vit.files import write_text_atomic

REPORT_FILE = "report.md"
PAPER = "Dosovitskiy et al., *An Image is Worth 16x16 Words*, ICLR 2021 (arXiv 2010.11929)"

# The ViT paper's Table 8 (Appendix D.4): ViT-B/16 pre-trained on JFT, ImageNet 5-shot linear accuracy (%),
# position embedding "added at input" (the only place lit_vit adds it). sincos_2d and rope_2d are not in the table.
TABLE8_5SHOT = {"none": 61.382, "learned_1d": 64.206, "learned_2d": 64.001, "relative": 64.032}

# What the paper reports for the two other ablations it has a figure for; it gives no numbers we could quote.
FIGURE9 = {  # Appendix D.3, Figure 9: class token vs global average pooling (GAP)
    "cls": "class token: the paper's read-out",
    "gap_own_lr": "GAP at its own lr: as good as the class token",
    "gap_cls_lr": "GAP at the class token's lr: performed poorly",
}
FIGURE5 = {  # section 4.4, Figure 5: performance vs pre-training compute
    "hybrid": "hybrid: slightly better than ViT at small compute; the gap vanishes for larger models",
    "vit": "ViT: behind the hybrid at small compute, level with it at large",
}

_PLOT_CAPTIONS = {
    "accuracy.png": "final val top-1 per variant (mean +- std over seeds, every seed a dot), with the 5-shot probe",
    "curves.png": "validation top-1 per epoch (mean over seeds, band = min..max)",
    "compute.png": "final val top-1 against measured training compute",
    "pos_embed_similarity.png": "position-embedding similarity (each small map: one patch vs all patches)",
    "relative_bias.png": "learned relative position bias per head",
    "attention_distance.png": "mean attention distance per head against depth",
    "attention_rollout.png": "attention rollout on validation images",
}
_POS_KEY, _POOL_KEY, _BACKBONE_KEY = (
    "model.init_args.backbone.init_args.pos_embed",
    "model.init_args.backbone.init_args.pool",
    "model.init_args.backbone.class_path",
)
_LR_KEY = "model.init_args.lr"


# ---------------------------------------------------------------- table helpers


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured markdown table (cells are str()-ed, `|` escaped)."""

    def line(cells: list[Any]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "---|" * len(header), *(line(r) for r in rows)])


def _pct(values: list[float | None]) -> str:
    """Fractions as a percentage, mean +- std over seeds (one decimal); "-" when none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, std = mean_std([100 * v for v in values])
    return f"{mean:.1f} +- {std:.1f}"


def _num(values: list[float | None], digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:,.{digits}f} +- {std:,.{digits}f}" if len(values) > 1 else f"{mean:,.{digits}f}"


def _same(values: list[Any]) -> str:
    """One value when every seed has it, else every seed's value."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(set(values)) == 1:
        return f"{values[0]:,}" if isinstance(values[0], int) else str(values[0])
    return ", ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in values)


def _by_variant(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["variant"], []).append(row)
    return out


def _tflops(group: list[dict]) -> str:
    """Measured training compute in TFLOPs, with enough decimals for tiny runs."""
    values = [r.get("train_flops") for r in group]
    if None in values:
        return "-"
    digits = 3 if max(values) >= 1e10 else 6
    return _num([v / 1e12 for v in values], digits)


def _has_flops(rows: list[dict]) -> bool:
    return bool(rows) and all(r.get("train_flops") is not None for r in rows)


def results_table(rows: list[dict], reference: dict[str, str] | None = None, reference_title: str = "") -> str:
    """Per variant (in row order): seeds, final / best val top-1 and top-5, every few-shot probe, in % (mean +- std
    over seeds); a paper column when `reference` (variant -> text) is given."""
    shots = fewshot_columns(rows)
    header = ["variant", "seeds", "final val top-1 %", "best val top-1 %", "final val top-5 %", "top-5 at best top-1 %"]
    header += [f"{c.removeprefix('fewshot_').replace('shot', '-shot')} probe %" for c in shots]
    header += [reference_title] if reference is not None else []
    body = []
    for name, group in _by_variant(rows).items():
        line = [f"`{name}`", ", ".join(str(r["seed"]) for r in group)]
        line += [_pct([r.get(c) for r in group]) for c in ("final_val_acc1", "best_val_acc1")]
        line += [_pct([r.get(c) for r in group]) for c in ("final_val_acc5", "best_val_acc5")]
        line += [_pct([r.get(c) for r in group]) for c in shots]
        line += [reference.get(name, "-")] if reference is not None else []
        body.append(line)
    return markdown_table(header, body)


def cost_table(rows: list[dict]) -> str:
    """Per variant: val loss, best epoch, epochs, steps, params, training throughput, wall time, measured compute."""
    header = ["variant", "final val loss", "min val loss", "best epoch", "epochs", "steps", "params"]
    header += ["train img/s", "wall s per run"] + (["compute TFLOPs"] if _has_flops(rows) else [])
    body = []
    for name, group in _by_variant(rows).items():
        line = [f"`{name}`", _num([r.get("final_val_loss") for r in group], 3)]
        line += [_num([r.get("min_val_loss") for r in group], 3), _same([r.get("best_epoch") for r in group])]
        line += [_same([r.get(c) for r in group]) for c in ("epochs", "steps", "params")]
        line += [_num([r.get("train_images_per_s") for r in group]), _num([r.get("wall_s") for r in group])]
        line += [_tflops(group)] if _has_flops(rows) else []
        body.append(line)
    return markdown_table(header, body)


def summary_table(rows: list[dict], reference: dict[str, str] | None = None, reference_title: str = "") -> str:
    """The short table of README / docs: final and best top-1, the few-shot probes, params, compute when measured."""
    shots = fewshot_columns(rows)
    flops = _has_flops(rows)
    header = ["variant", "final val top-1 %", "best val top-1 %"]
    header += [f"{c.removeprefix('fewshot_').replace('shot', '-shot')} %" for c in shots] + ["params"]
    header += (["compute TFLOPs"] if flops else []) + ([reference_title] if reference is not None else [])
    body = []
    for name, group in _by_variant(rows).items():
        line = [f"`{name}`", _pct([r["final_val_acc1"] for r in group]), _pct([r["best_val_acc1"] for r in group])]
        line += [_pct([r.get(c) for r in group]) for c in shots] + [_same([r.get("params") for r in group])]
        line += ([_tflops(group)] if flops else []) + ([reference.get(name, "-")] if reference is not None else [])
        body.append(line)
    return markdown_table(header, body)


# ---------------------------------------------------------------- the sweep's variants and the paper's ablations


def _sweep_config(sweep_dir: Path) -> dict:
    path = sweep_dir / "sweep.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _variants(config: dict, done: list[dict]) -> list[dict]:
    """[{name, overrides}] from sweep.yaml, else from the runs' done.json."""
    listed = ((config.get("ablation") or {}).get("variants")) or []
    if listed:
        return [{"name": v["name"], "overrides": v.get("overrides") or {}} for v in listed]
    seen: dict[str, dict] = {}
    for row in done:
        seen.setdefault(row["variant"], {"name": row["variant"], "overrides": row.get("overrides") or {}})
    return list(seen.values())


def resolved(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The flat config of a variant: `base` (flat, dotted keys) with each override replacing the key or subtree."""
    flat = dict(base)
    for key, value in overrides.items():
        for old in [k for k in flat if k == key or k.startswith(key + ".")]:
            del flat[old]
        flat.update(flatten(value, key) if isinstance(value, dict) and value else {key: value})
    return flat


def variant_diffs(base: dict[str, Any], overrides: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, base value, variant value) for every key the variant's overrides change (None: not set)."""
    mine = resolved(base, overrides)
    prefixes = tuple(overrides)
    keys = sorted(k for k in set(base) | set(mine) if any(k == p or k.startswith(p + ".") for p in prefixes))
    return [(k, base.get(k), mine.get(k)) for k in keys if base.get(k) != mine.get(k)]


def paper_ablation(base: dict[str, Any], variants: list[dict]) -> str | None:
    """Which of the ViT paper's ablations a sweep is, from what differs between its variants: "hybrid" (the backbone
    class), "pos_embed" (the position embedding) or "pool" (the read-out); None for any other sweep."""
    configs = [resolved(base, v["overrides"]) for v in variants]

    def varies(key: str) -> bool:
        return len({json.dumps(c.get(key), sort_keys=True, default=str) for c in configs}) > 1

    if varies(_BACKBONE_KEY) and any("Hybrid" in str(c.get(_BACKBONE_KEY)) for c in configs):
        return "hybrid"
    if varies(_POS_KEY):
        return "pos_embed"
    if varies(_POOL_KEY):
        return "pool"
    return None


def _table8(pos_embed: Any) -> str:
    return f"{TABLE8_5SHOT[pos_embed]:.2f}" if pos_embed in TABLE8_5SHOT else f"`{pos_embed}`: not in Table 8"


def paper_reference(kind: str, base: dict[str, Any], variants: list[dict]) -> tuple[str, dict[str, str], str]:
    """(column title, variant -> the paper's number or finding, the note under the table) for a paper ablation."""
    configs = {v["name"]: resolved(base, v["overrides"]) for v in variants}
    if kind == "pos_embed":
        ref = {}
        for name, c in configs.items():
            ref[name] = _table8(c.get(_POS_KEY))
        note = (
            f"Paper: {PAPER}, Appendix D.4, Table 8: ViT-B/16 pre-trained on JFT, ImageNet 5-shot linear "
            "accuracy in %, position embedding added at the input (the other columns of Table 8, added in every "
            "layer, differ by at most 0.3). Compare the ordering with this sweep's 5-shot probe column, not the "
            "values: the paper's model, data and probe set are far larger. Its finding: no position information is "
            "clearly worse, the kinds are within 0.3 points of each other."
        )
        return "paper, Table 8 (5-shot %)", ref, note
    if kind == "pool":
        cls_lrs = {c.get(_LR_KEY) for c in configs.values() if c.get(_POOL_KEY) == "cls"}
        ref = {}
        for name, c in configs.items():
            if c.get(_POOL_KEY) == "cls":
                ref[name] = FIGURE9["cls"]
            elif c.get(_POOL_KEY) == "gap":
                ref[name] = FIGURE9["gap_cls_lr" if c.get(_LR_KEY) in cls_lrs else "gap_own_lr"]
        note = (
            f"Paper: {PAPER}, Appendix D.3, Figure 9: class token and global average pooling (GAP) work equally well, "
            "but need different learning rates; GAP at the class token's learning rate performed poorly. The figure "
            "gives curves, not a table, so no numbers are quoted."
        )
        return "paper, Figure 9", ref, note
    ref = {name: FIGURE5["hybrid" if "Hybrid" in str(c.get(_BACKBONE_KEY)) else "vit"] for name, c in configs.items()}
    note = (
        f'Paper: {PAPER}, section 4.4, Figure 5: "hybrids slightly outperform ViT at small computational budgets, but '
        'the difference vanishes for larger models" (JFT pre-training, transfer accuracy against pre-training '
        "compute). Compare the trend along compute.png, not the values."
    )
    return "paper, Figure 5", ref, note


# ---------------------------------------------------------------- report.md


def _value(value: Any) -> str:
    if value is None:
        return "(not set)"
    return f"`{value if isinstance(value, str) else json.dumps(value)}`"


def _machines(done: list[dict]) -> str:
    """The machines the runs were trained on (done.json's `machine`, see results.machine_info)."""
    groups: dict[str, tuple[dict, list[str]]] = {}
    missing = []
    for row in done:
        machine = row.get("machine")
        label = f"`{row['variant']}` seed {row['seed']}"
        if not machine:
            missing.append(label)
            continue
        key = json.dumps(machine, sort_keys=True)
        groups.setdefault(key, (machine, []))[1].append(label)
    if not groups:
        return (
            "Not recorded: these runs' done.json files hold no `machine` entry. The machine that ran `plot` is not "
            "reported, as it need not be the one that trained."
        )
    header = ["runs", "CPU (cores)", "GPUs", "torch threads", "Python", "torch", "lightning", "lit_vit", "git commit"]
    body = []
    for machine, labels in groups.values():
        runs = "all" if len(groups) == 1 and not missing else ", ".join(labels)
        body.append(
            [
                runs,
                f"{machine.get('cpu', '?')} ({machine.get('cpu_count', '?')})",
                ", ".join(machine.get("gpus") or []) or "none",
                machine.get("torch_threads", "?"),
                machine.get("python", "?"),
                machine.get("torch", "?"),
                machine.get("lightning", "?"),
                machine.get("lit_vit", "?"),
                f"`{machine['git_commit']}`" if machine.get("git_commit") else "not known",
            ]
        )
    text = markdown_table(header, body)
    if missing:
        text += f"\n\nNot recorded for: {', '.join(missing)}."
    return text


def _plots(sweep_dir: Path) -> str:
    pngs = sorted(p.name for p in sweep_dir.glob("*.png"))
    known = [n for n in _PLOT_CAPTIONS if n in pngs] + [n for n in pngs if n not in _PLOT_CAPTIONS]
    if not known:
        return "No plots in this folder."
    return "\n\n".join(f"**{n}**: {_PLOT_CAPTIONS.get(n, n)}\n\n![{n}]({quote(n)})" for n in known)


def report_text(sweep_dir: str | Path, rows: list[dict] | None = None) -> str:
    """The report.md of a sweep folder, from its results.csv (or `rows`), sweep.yaml, done.json files and PNGs."""
    sweep_dir = Path(sweep_dir)
    rows = read_results(sweep_dir) if rows is None else rows
    config = _sweep_config(sweep_dir)
    done = collect(sweep_dir)
    variants = _variants(config, done)
    base = flatten({k: v for k, v in config.items() if k != "ablation"})
    seeds = list((config.get("ablation") or {}).get("seeds") or sorted({r["seed"] for r in rows}))
    where = str((config.get("trainer") or {}).get("default_root_dir") or sweep_dir)
    finished = {(r["variant"], r["seed"]) for r in rows}
    expected = [(v["name"], s) for v in variants for s in seeds]
    unfinished = [f"`{v}` seed {s}" for v, s in expected if (v, s) not in finished]

    out = [f"# Ablation sweep `{sweep_dir.name}`", ""]
    status = f"{len(finished)} of {len(expected) or len(finished)} runs finished"
    status += f" (not finished: {', '.join(unfinished)})." if unfinished else "."
    out.append(
        f"{len(variants)} variant(s) x {len(seeds)} seed(s) {seeds}: {status} Each run is an ordinary lit_vit run in "
        "`<variant>/seed=<n>/`; numbers are from `results.csv`, mean +- std over the finished seeds. Written by "
        "lit_vit with the plots; `python -m lit_vit plot` redraws it."
    )
    kind = paper_ablation(base, variants) if variants and config else None
    reference = paper_reference(kind, base, variants) if kind else None
    out += ["", "## Results", ""]
    out.append(
        "Top-1 / top-5 of the trained classifier on the validation split; k-shot probe: FewShotEval's linear probe"
    )
    out.append("of the frozen encoder (k training images per class), the ViT paper's ablation metric.")
    out += ["", results_table(rows, reference[1] if reference else None, reference[0] if reference else ""), ""]
    if reference:
        out += [reference[2], ""]
    out += ["## Loss, size and cost", "", cost_table(rows), ""]
    walls = [r["wall_s"] for r in rows if r.get("wall_s") is not None]
    if walls:
        out += [
            f"Wall time: {sum(walls):,.0f} s summed over {len(walls)} runs (longest {max(walls):,.0f} s); runs trained "
            "side by side (`ablation.workers`) or on a busy machine take longer each, so compare img/s within a sweep.",
            "",
        ]
    out += ["## Plots", "", _plots(sweep_dir), ""]
    out += ["## What differs between the variants", ""]
    if not config:
        out += ["`sweep.yaml` is missing, so the base config is not known; each variant's overrides:", ""]
    else:
        out += [
            "Each variant is `sweep.yaml` (the base) with its overrides; every key it changes (`(not set)`: absent, so "
            "the default applies):",
            "",
        ]
    diff_rows = []
    for v in variants:
        diffs = variant_diffs(base, v["overrides"])
        diff_rows += [[f"`{v['name']}`", f"`{k}`", _value(a), _value(b)] for k, a, b in diffs]
        if not diffs:
            diff_rows.append([f"`{v['name']}`", "(nothing: the base config)", "", ""])
    out += [markdown_table(["variant", "key", "base", "variant"], diff_rows), ""]
    out += ["## Machine and versions", "", _machines(done), ""]
    out += [
        "## Reproduce",
        "",
        "From the folder the sweep was started in. Rerun (resume) it: finished runs are skipped, an interrupted run",
        "resumes from its `last.ckpt`, the rest start; `plot` redraws results.csv, the plots and this report:",
        "",
        "```",
        f"python -m lit_vit fit --config {where}/sweep.yaml",
        f"python -m lit_vit plot {where}",
        "```",
        "",
        "Reproduce it from scratch in a new folder (results differ slightly between machines: other CPU kernels):",
        "",
        "```",
        f"python -m lit_vit fit --config {where}/sweep.yaml --trainer.default_root_dir <new folder>",
        "```",
        "",
    ]
    return "\n".join(out)


def write_report(sweep_dir: str | Path, rows: list[dict] | None = None) -> Path:
    """Write `<sweep dir>/report.md` (atomically: other hosts of the sweep may read it)."""
    sweep_dir = Path(sweep_dir)
    return write_text_atomic(sweep_dir / REPORT_FILE, report_text(sweep_dir, rows))


# ---------------------------------------------------------------- README / docs tables

DOCS_ROOT = Path(__file__).resolve().parents[2]
_MARKER = re.compile(r"<!-- table: (?P<args>[^>]*?) -->\n(?P<body>.*?)<!-- end table -->", re.S)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def docs_table(docs: Path, args: str) -> str:
    """The table a marker asks for: `<csv> [paper=table8] [compare=<csv>]`, files in `docs`. A results CSV (with
    variant and seed columns) becomes a summary per variant; any other CSV is shown as it is."""
    name, *options = args.split()
    opts = dict(o.split("=", 1) for o in options)
    path = docs / name
    if not path.is_file():
        raise FileNotFoundError(f"a table marker names {path}, which does not exist")
    plain = _read_csv(path)
    if not plain or not {"variant", "seed"} <= set(plain[0]):
        return markdown_table(list(plain[0]) if plain else [name], [list(r.values()) for r in plain])
    rows = parse_results(path)
    if "compare" in opts:  # this CSV's final top-1 next to another measurement of the same variants
        other = {r["variant"]: r for r in _read_csv(docs / opts["compare"])}
        column = [c for c in next(iter(other.values())) if c != "variant"][0]
        body = []
        for variant, group in _by_variant(rows).items():
            mine = round(mean_std([100 * r["final_val_acc1"] for r in group])[0], 1)
            theirs = other.get(variant, {}).get(column)
            body.append([f"`{variant}`", f"{mine:.1f}", theirs or "not measured",
                         f"{float(theirs) - mine:+.1f}" if theirs else "-"])  # fmt: skip
        header = ["variant", f"`{name}`: final val top-1 % (mean)", f"`{opts['compare']}`: {column}", "difference"]
        return markdown_table(header, body)
    if opts.get("paper") == "table8":  # in the docs' position-embedding CSVs the variant names are the pos_embed kinds
        return summary_table(rows, {n: _table8(n) for n in _by_variant(rows)}, "paper, Table 8 (5-shot %)")
    return summary_table(rows)


def update_docs(root: Path = DOCS_ROOT, check: bool = False) -> list[Path]:
    """Rewrite every marked table in README.md and docs/*.md from its CSV in docs/; returns the files that were (in
    check mode: would be) changed."""
    changed = []
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        if not path.is_file():
            continue
        text = path.read_text()

        def fill(match: re.Match) -> str:
            table = docs_table(root / "docs", match["args"].strip())
            return f"<!-- table: {match['args']} -->\n{table}\n<!-- end table -->"

        new = _MARKER.sub(fill, text)
        if new != text:
            changed.append(path)
            if not check:
                path.write_text(new)
    return changed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_vit.ablation.report",
        description="Write a sweep folder's report.md, or regenerate the run-result tables of README.md and docs/.",
    )
    parser.add_argument("sweep_dir", nargs="?", help="a sweep folder: write its report.md")
    parser.add_argument("--docs", action="store_true", help="rewrite the tables in README.md and docs/*.md")
    parser.add_argument("--check", action="store_true", help="with --docs: change nothing, exit 1 if a table is stale")
    args = parser.parse_args(argv)
    if args.docs:
        changed = update_docs(check=args.check)
        for path in changed:
            print(f"{'stale' if args.check else 'updated'}: {path}")
        if args.check and changed:
            sys.exit(1)
    elif args.sweep_dir:
        print(write_report(args.sweep_dir))
    else:
        parser.error("give a sweep folder or --docs")


if __name__ == "__main__":
    main()
