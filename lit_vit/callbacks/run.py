"""The run directory: metrics.csv that survives resumes, atomic checkpoints, and a last.ckpt that is always there."""

import csv
import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from lit_vit.errors import BadImageError


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; this one keeps it and appends (resumed runs)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])

    def drop_rows_from_step(self, step: int) -> None:
        """Drop rows logged at `step` or later: a run resumed from a checkpoint taken after `step` optimiser steps
        logs them again. (Lightning logs a row with the number of steps taken before it, so those rows stay.)"""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        kept = [r for r in rows if not r.get("step") or int(r["step"]) < step]
        if len(kept) < len(rows):
            with open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(kept)


class RunLogger(CSVLogger):
    """CSVLogger writing `<run dir>/metrics.csv` directly (no version_N folders) and appending on resume."""

    def __init__(self, save_dir: str, flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir, name="", version="", flush_logs_every_n_steps=flush_logs_every_n_steps)

    @property
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _atomic_save(trainer: L.Trainer, path: Path, weights_only: bool = False) -> None:
    """Write to a temporary file and rename: a run killed while saving never leaves a truncated checkpoint."""
    tmp = path.with_name(path.name + ".tmp")
    trainer.save_checkpoint(tmp, weights_only)
    if trainer.is_global_zero:
        os.replace(tmp, path)
    trainer.strategy.barrier("atomic_save")


class AtomicModelCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose files are replaced atomically."""

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        _atomic_save(trainer, Path(filepath), self.save_weights_only)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)


class LastCheckpoint(Callback):
    """Keeps `<dirpath>/last.ckpt` current: every `every_n_steps` optimiser steps, after each validation and training
    epoch, at the end of training and when the run is interrupted (Ctrl-C, SIGTERM) in a single process.

    On resume it drops the metrics.csv rows logged after the checkpoint's step (the resumed run logs them again), so
    one run keeps one metrics file without duplicated rows.
    """

    def __init__(self, dirpath: str | Path, every_n_steps: int = 100) -> None:
        self.path = Path(dirpath) / "last.ckpt"
        self.every_n_steps = every_n_steps
        self._resumed_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.sanity_checking or trainer.global_step == 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(trainer, self.path)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self.every_n_steps > 0 and trainer.global_step % self.every_n_steps == 0:
            self._save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        # in a multi-process run the other ranks may be gone: rely on the periodic checkpoint there. A bad image stops
        # the run before its batch reaches the model, so the state is consistent and the resumed run retries that batch.
        if (
            trainer.state.fn == "fit"
            and trainer.world_size == 1
            and isinstance(exception, KeyboardInterrupt | SystemExit | BadImageError)
        ):
            self._save(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._resumed_step = checkpoint.get("global_step")

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        logger = next((lg for lg in trainer.loggers if isinstance(lg, RunLogger)), None)
        if self._resumed_step is not None and logger is not None and trainer.is_global_zero:
            logger.experiment.drop_rows_from_step(self._resumed_step)
        self._resumed_step = None
