"""RunLogger: <run dir>/metrics.csv through Lightning's public Logger API, kept and appended to on resume."""

import csv

import torch
import yaml

from lit_vit.run_folder import RunLogger


def rows(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_rows_are_written_at_every_save_and_a_new_column_rewrites_the_header(tmp_path):
    logger = RunLogger(tmp_path / "run")
    logger.log_hyperparams({"lr": 0.1, "depth": 2})
    logger.log_metrics({"train/loss": torch.tensor(2.5), "epoch": 0}, step=0)
    logger.save()
    logger.log_metrics({"train/loss": 2.0, "epoch": 0}, step=9)
    logger.log_metrics({"val/acc1": 0.5, "epoch": 0}, step=9)
    logger.save()
    fields, written = rows(tmp_path / "run" / "metrics.csv")
    assert fields == ["epoch", "step", "train/loss", "val/acc1"]
    assert [(r["step"], r["train/loss"], r["val/acc1"]) for r in written] == [
        ("0", "2.5", ""), ("9", "2.0", ""), ("9", "", "0.5"),
    ]  # fmt: skip
    assert yaml.safe_load((tmp_path / "run" / "hparams.yaml").read_text()) == {"lr": 0.1, "depth": 2}
    assert logger.log_dir == logger.save_dir == logger.root_dir == str(tmp_path / "run")
    assert logger.name == logger.version == ""


def test_a_resumed_run_appends_to_its_metrics_and_drops_the_rows_it_logs_again(tmp_path):
    first = RunLogger(tmp_path)
    for step in (0, 10, 20, 30):
        first.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    first.finalize("interrupted")
    resumed = RunLogger(tmp_path)  # a new process: Lightning's CSVLogger would delete the file here
    resumed.drop_rows_from_step(20)  # the checkpoint was taken after 20 steps
    resumed.log_metrics({"train/loss": 0.5, "val/acc1": 0.7}, step=20)
    resumed.save()
    fields, written = rows(tmp_path / "metrics.csv")
    assert fields == ["step", "train/loss", "val/acc1"]
    assert [r["step"] for r in written] == ["0", "10", "20"] and written[-1]["val/acc1"] == "0.7"
