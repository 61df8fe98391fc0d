import csv
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_vit.errors import ConfigError


class PredictionCSVWriter(BasePredictionWriter):
    """Writes the top-k classes with names and probabilities of every predicted image to a CSV file.

    Columns: path, class_1, prob_1, ..., class_k, prob_k (names from the trained model's class_names). Files that
    cannot be decoded get no row: every good row is written, then the bad files are reported in one error.
    """

    def __init__(self, output: str | Path, top_k: int = 5) -> None:
        super().__init__(write_interval="batch")
        self.output, self.top_k = Path(output), top_k
        self._rows: list[list[Any]] = []
        self._bad: list[str] = []

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._bad = [], []
        classes = pl_module.hparams.get("num_classes")
        if self.top_k < 1 or (classes is not None and self.top_k > classes):
            raise ConfigError(
                f"--predict_top_k {self.top_k}: the model has {classes} classes, so give 1 to {classes} "
                f"(e.g. --predict_top_k {min(5, classes or 5)})"
            )

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        names = pl_module.hparams.get("class_names") or [str(i) for i in range(prediction["probs"].shape[-1])]
        paths = trainer.datamodule.predict_paths
        k = min(self.top_k, prediction["probs"].shape[-1])
        probs, classes = prediction["probs"].topk(k, dim=-1)
        for index, p, c in zip(prediction["index"].tolist(), probs.tolist(), classes.tolist()):
            if index < 0:  # the dataset's mark for a file it could not decode (on_bad_image: report)
                self._bad.append(paths[-index - 1])
                continue
            row: list[Any] = [paths[index]]
            for ci, pi in zip(c, p):
                row += [names[ci], f"{pi:.6f}"]
            self._rows.append(row)

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        output = self.output if trainer.world_size == 1 else self.output.with_suffix(f".rank{trainer.global_rank}.csv")
        output.parent.mkdir(parents=True, exist_ok=True)
        k = (len(self._rows[0]) - 1) // 2 if self._rows else self.top_k
        with open(output, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("class", "prob")])
            writer.writerows(sorted(self._rows))
        print(f"wrote {len(self._rows)} predictions to {output}")
        if self._bad:
            bad = sorted(self._bad)
            raise ConfigError(
                f"{len(bad)} of {len(bad) + len(self._rows)} images could not be read and have no row in {output}: "
                f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; remove or replace them"
            )
