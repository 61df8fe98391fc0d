"""Callbacks that CLI tests inject through --trainer.callbacks (importable because pytest puts tests/ on sys.path)."""

import json

import lightning as L
from lightning.pytorch.callbacks import Callback


class RecordBatches(Callback):
    """Appends (global step, epoch, fingerprint of the batch) for every training batch to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        x, y = batch
        record = {"step": trainer.global_step, "epoch": trainer.current_epoch, "x": round(float(x.sum()), 3)}
        with open(self.path, "a") as f:
            f.write(json.dumps(record | {"y": y.tolist()}) + "\n")


class CrashAtStep(Callback):
    """Simulates a crash (e.g. a node failure) when the given global step is reached."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")
