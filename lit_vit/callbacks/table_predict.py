"""The predict CSV of modules that build their own table (the ViLT modules): lit_vit.cli uses it for them."""

import csv
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_vit.errors import ConfigError


class TablePredictionWriter(BasePredictionWriter):
    """Writes the predictions of a module that makes its own table (the ViLT modules) to a CSV file.

    The module's `predict_step` returns a dict of tensors per batch (with `bad`: the input rows whose image could not
    be read); at the end `pl_module.prediction_table(predictions, top_k)` turns them into (header, rows, bad files).
    The same guarantees as PredictionCSVWriter: every good row is written, then the bad files are reported in one
    error (exit status 2 from the CLI).
    """

    def __init__(self, output: str | Path, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.output, self.top_k = Path(output), top_k
        self._predictions: list[dict[str, Any]] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._predictions = []
        if self.top_k < 1:
            raise ConfigError(f"--predict_top_k must be 1 or more, got {self.top_k}")

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        self._predictions.append({k: v.detach().cpu() for k, v in prediction.items()})

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        header, rows, bad = pl_module.prediction_table(self._predictions, self.top_k)
        output = self.output if trainer.world_size == 1 else self.output.with_suffix(f".rank{trainer.global_rank}.csv")
        output.parent.mkdir(parents=True, exist_ok=True)
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows)
        print(f"wrote {len(rows)} predictions to {output}")
        if bad:
            bad = sorted(set(bad))
            raise ConfigError(
                f"{len(bad)} image file(s) could not be read and have no row in {output}: "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; remove or replace them"
            )
