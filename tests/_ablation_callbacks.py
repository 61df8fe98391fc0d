"""Callbacks the ablation tests inject through trainer.callbacks (importable: pytest puts tests/ on sys.path)."""

import json
import shutil
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class CrashOnce(Callback):
    """Crashes the run whose folder ends with `run` at global step `step`, once (a marker file remembers it)."""

    def __init__(self, run: str, step: int, marker: str) -> None:
        self.run, self.step, self.marker = run, step, Path(marker)

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        here = Path(trainer.default_root_dir).as_posix()
        if here.endswith(self.run) and trainer.global_step == self.step and not self.marker.exists():
            self.marker.touch()
            raise RuntimeError(f"simulated crash of {self.run} at step {self.step}")


class RecordSteps(Callback):
    """Appends (run folder, global step) of every training batch to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
        parts = Path(trainer.default_root_dir).parts
        with open(self.path, "a") as f:
            f.write(json.dumps({"run": "/".join(parts[-2:]), "step": trainer.global_step}) + "\n")


class SlowSteps(Callback):
    """Sleeps after every training batch of the run whose folder ends with `run` (time to signal a live sweep)."""

    def __init__(self, run: str, seconds: float) -> None:
        self.run, self.seconds = run, seconds

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if Path(trainer.default_root_dir).as_posix().endswith(self.run):
            time.sleep(self.seconds)


class RemoveRunFolder(Callback):
    """Deletes the folder of the run whose folder ends with `run` after its training step `step` (a user's `rm -rf`
    while the sweep trains it)."""

    def __init__(self, run: str, step: int) -> None:
        self.run, self.step = run, step

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        here = Path(trainer.default_root_dir)
        if here.as_posix().endswith(self.run) and trainer.global_step == self.step and here.is_dir():
            shutil.rmtree(here)
