"""report.md of a sweep folder (written with the plots, redrawn by `plot`) and the generated README / docs tables."""

import csv
import json
import re
from pathlib import Path

import pytest
import yaml

from lit_vit.ablation.report import REPORT_FILE, TABLE8_5SHOT, paper_ablation, report_text
from lit_vit.ablation.results import collect, machine_info, read_results, run_dir, write_done, write_results
from lit_vit.cli import main
from lit_vit.config_diff import flatten

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def fake_sweep(folder: Path, experiment: str, results_csv: str | None = None, machine: dict | None = None) -> Path:
    """A finished sweep folder without training: the experiment's YAML as sweep.yaml and one done.json per run (rows
    from a docs/ CSV, or made up for every variant x seed)."""
    config = yaml.safe_load((ROOT / "experiments" / experiment).read_text())
    config["trainer"]["default_root_dir"] = str(folder)
    folder.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    if results_csv:
        with open(DOCS / results_csv, newline="") as f:
            rows = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    else:
        names = [v["name"] for v in config["ablation"]["variants"]]
        rows = [
            {"variant": n, "seed": s, "best_val_acc1": 0.9, "final_val_acc1": 0.85 + 0.01 * i, "params": 1000}
            for i, n in enumerate(names)
            for s in config["ablation"]["seeds"]
        ]
    for row in rows:
        row["seed"] = int(row["seed"])
        row.update(machine=machine) if machine else None
        run = run_dir(folder, row["variant"], row["seed"])
        run.mkdir(parents=True)
        write_done(run, {k: float(v) if k not in ("variant", "seed", "machine") else v for k, v in row.items()})
    write_results(folder, collect(folder))
    return folder


@pytest.fixture(scope="module")
def pos_sweep(tmp_path_factory):
    """The main job's folder as `plot` sees it (runs from docs/ablation_pos_results.csv, recorded machine), plotted."""
    folder = tmp_path_factory.mktemp("pos") / "ablation_pos"
    fake_sweep(folder, "ablation_pos.yaml", "ablation_pos_results.csv", machine=machine_info())
    (folder / "extra_plot.png").write_bytes((DOCS / "ablation_pos.png").read_bytes())  # any PNG there is linked
    main(["plot", str(folder)])
    return folder


def test_plot_writes_report_md_naming_every_variant_and_linking_every_png(pos_sweep):
    report = (pos_sweep / REPORT_FILE).read_text()
    for variant in ("none", "learned_1d", "learned_2d", "sincos_2d", "relative"):
        assert re.search(rf"^\| `{variant}` \| 0, 1 \|", report, re.M), variant  # a results row with both seeds
    pngs = sorted(p.name for p in pos_sweep.glob("*.png"))
    assert {"accuracy.png", "curves.png", "extra_plot.png"} <= set(pngs)
    for name in pngs:
        assert f"![{name}]({name})" in report  # relative links: renders on GitHub next to the PNGs


def test_report_md_has_mean_std_of_every_metric_and_the_paper_table8_numbers(pos_sweep):
    report = (pos_sweep / REPORT_FILE).read_text()
    rows = [r for r in read_results(pos_sweep) if r["variant"] == "none"]
    assert len(rows) == 2
    # none: final top-1 81.8 +- 2.6 and 5-shot 79.4 +- 5.3 over seeds 0 and 1 (docs/ablation_pos_results.csv)
    none_row = next(line for line in report.splitlines() if line.startswith("| `none` | 0, 1"))
    assert "| 81.8 +- 2.6 |" in none_row and "| 79.4 +- 5.3 |" in none_row and "| 61.38 |" in none_row
    for header in ("1-shot probe %", "5-shot probe %", "10-shot probe %", "25-shot probe %", "params", "train img/s"):
        assert header in report
    assert "paper, Table 8" in report and "arXiv 2010.11929" in report
    for kind, value in TABLE8_5SHOT.items():
        assert f"| `{kind}` |" in report and f"| {value:.2f} |" in report
    assert "`sincos_2d`: not in Table 8" in report


def test_report_md_has_config_diff_machine_and_commands(pos_sweep):
    report = (pos_sweep / REPORT_FILE).read_text()
    key = "model.init_args.backbone.init_args.pos_embed"
    assert f"| `relative` | `{key}` | `learned_1d` | `relative` |" in report
    assert "| `learned_1d` | (nothing: the base config) |" in report
    info = machine_info()
    assert info["cpu"] in report and f"| {info['torch']} |" in report and f"| {info['lightning']} |" in report
    assert f"python -m lit_vit fit --config {pos_sweep}/sweep.yaml" in report
    assert f"python -m lit_vit plot {pos_sweep}" in report
    assert "244 s summed over 10 runs" in report  # the CSV's wall_s


def test_a_deleted_report_md_comes_back_with_plot(pos_sweep, capsys):
    before = (pos_sweep / REPORT_FILE).read_text()
    (pos_sweep / REPORT_FILE).unlink()
    main(["plot", str(pos_sweep)])
    assert (pos_sweep / REPORT_FILE).read_text() == before
    assert str(pos_sweep / REPORT_FILE) in capsys.readouterr().out


def test_report_md_without_recorded_machine_does_not_report_the_plotting_machine(tmp_path):
    folder = fake_sweep(tmp_path / "s", "ablation_pos_rope.yaml", "ablation_pos_rope_results.csv")
    report = report_text(folder)
    assert "Not recorded" in report and machine_info()["cpu"] not in report
    assert "`rope_2d`: not in Table 8" in report


def test_which_paper_ablation_is_read_from_the_variants_overrides_not_the_folder_name(tmp_path):
    hybrid = fake_sweep(tmp_path / "my_pos_sweep", "ablation_hybrid.yaml", "ablation_hybrid_results.csv")
    report = report_text(hybrid)
    assert "paper, Figure 5" in report and "Table 8" not in report
    assert "compute TFLOPs" in report  # the runs measured their compute
    pool = fake_sweep(tmp_path / "pool", "ablation_pool.yaml")
    report = report_text(pool)
    assert "paper, Figure 9" in report
    assert re.search(r"^\| `gap_cls_lr` .*performed poorly \|$", report, re.M)  # GAP at the class token's lr
    assert re.search(r"^\| `gap` .*as good as the class token \|$", report, re.M)
    config = yaml.safe_load((ROOT / "experiments" / "quickstart.yaml").read_text())
    lrs = [{"name": "a", "overrides": {"model.init_args.lr": 1e-3}}, {"name": "b", "overrides": {}}]
    assert paper_ablation(flatten(config), lrs) is None


def test_machine_info_names_the_versions_a_run_was_trained_with():
    import torch

    info = machine_info()
    assert info["torch"] == torch.__version__ and info["torch_threads"] == torch.get_num_threads()
    assert info["cpu"] and info["cpu_count"] >= 1 and isinstance(info["gpus"], list)
    json.dumps(info)  # stored in done.json
