"""The run's checkpoint callbacks: a best.ckpt, and a last.ckpt that is always there.

A fit keeps `<run dir>/checkpoints/best.ckpt` and `last.ckpt` with Lightning's own callbacks where they do the job
(`run_checkpoints`): a `ModelCheckpoint` for best.ckpt, a `ModelCheckpoint(save_last=True, every_n_train_steps=N)`
for the periodic last.ckpt (`PeriodicLastCheckpoint`, which only leaves its empty state out of the checkpoint), and
`LastCheckpoint` for what Lightning's callbacks lack (see its docstring). Every checkpoint
goes through lit_vit.run_folder's `AtomicCheckpointIO`, given to the Trainer as a plugin; metrics.csv is
lit_vit.run_folder's `RunLogger`.
"""

import os
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint, ModelCheckpoint

from lit_vit.errors import BadImageError
from lit_vit.run_folder import RunLogger


class PeriodicLastCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint(save_last=True, save_top_k=0, every_n_train_steps=N): `<dirpath>/last.ckpt` every
    N optimiser steps, and nothing else. It keeps no state in the checkpoint (a ModelCheckpoint's is its best paths and
    scores, empty here): a run may resume with another N without Lightning's warning that a callback of the
    checkpoint is missing, and best.ckpt's ModelCheckpoint stays the checkpoint's only one with a score."""

    def __init__(self, dirpath: str | Path, every_n_steps: int) -> None:
        super().__init__(
            dirpath=dirpath,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=every_n_steps,
            enable_version_counter=False,
        )

    def state_dict(self) -> dict[str, Any]:
        return {}  # Lightning stores no entry for a callback whose state is empty


class LastCheckpoint(Checkpoint):
    """Writes `<dirpath>/last.ckpt` where Lightning's ModelCheckpoint does not: after every validation and training
    epoch of a fit, at its end, and when it is interrupted (Ctrl-C, SIGTERM, an unreadable training image) in a single
    process, so that `--ckpt_path last` continues from where the run stopped. On resume it drops the metrics.csv rows
    logged after the checkpoint's step (the resumed run logs them again): one run keeps one metrics file.

    What Lightning's callbacks lack, and this adds:
    - ModelCheckpoint(save_last=True) refreshes last.ckpt only beside a top-k checkpoint or every N steps, at most once
      per optimiser step, and in on_train_end only when it never wrote one: its last.ckpt would miss the state after a
      validation or an epoch end that falls between two periodic saves, and at the end of a fit it would record the
      last epoch as unfinished.
    - OnExceptionCheckpoint saves on every exception, on every rank. Here only interruptions are saved: Ctrl-C, SIGTERM
      (Lightning raises SIGTERMException between steps) and a bad image (raised while its batch is loaded, before the
      batch reaches the model, so the resumed run retries it). After another error the state may be half-way through
      a step, and in a multi-process run the other ranks may be gone (the save would wait for them forever): the
      periodic last.ckpt is kept there.
    - OnExceptionCheckpoint deletes its file at teardown (after a run that did not fail, and after validate / test /
      predict); here the file is the run's last.ckpt, which stays (a plain Checkpoint deletes nothing).
    """

    # A Checkpoint, not an OnExceptionCheckpoint (whose behaviour it overrides anyway): a Trainer holding an
    # OnExceptionCheckpoint turns every fit(ckpt_path=None) into ckpt_path="last" and warns twice about it (".fit(
    # ckpt_path=None) was called without a model", "no last checkpoint available"); lit_vit resolves --ckpt_path itself.
    def __init__(self, dirpath: str | Path) -> None:
        super().__init__()
        self.dirpath = dirpath
        self.ckpt_path = os.path.join(dirpath, ModelCheckpoint.CHECKPOINT_NAME_LAST + ModelCheckpoint.FILE_EXTENSION)

    def _save(self, trainer: L.Trainer) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking and trainer.global_step > 0:
            trainer.save_checkpoint(
                self.ckpt_path, weights_only=False
            )  # the full state (resume); saying so keeps Lightning from logging that it chose it

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the epoch's last batch, on_train_epoch_end comes next at the same step and writes the later state
        if not trainer.is_last_batch:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.world_size == 1 and isinstance(exception, KeyboardInterrupt | SystemExit | BadImageError):
            self._save(trainer)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # checkpoints of earlier lit_vit versions hold best.ckpt's callback state under the name of the ModelCheckpoint
        # subclass that kept it then (AtomicModelCheckpoint): hand it to the ModelCheckpoint that keeps it now, so an
        # older run resumes with its best score (Lightning calls every on_load_checkpoint before any load_state_dict)
        states = checkpoint.get("callbacks") or {}
        for key in [k for k in states if isinstance(k, str) and k.startswith("AtomicModelCheckpoint{")]:
            states.setdefault(key.removeprefix("Atomic"), states.pop(key))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the loops are restored by now (with every strategy: FSDP restores after on_fit_start)
        logger = next((lg for lg in trainer.loggers if isinstance(lg, RunLogger)), None)
        if trainer.ckpt_path is not None and logger is not None and trainer.is_global_zero:
            logger.drop_rows_from_step(trainer.global_step)


def run_checkpoints(dirpath: str | Path, monitor: str, mode: str = "max", every_n_steps: int = 100) -> list[Checkpoint]:
    """The checkpoint callbacks of a lit_vit run: `<dirpath>/best.ckpt`, the best `monitor` so far (checked after
    each validation), and `<dirpath>/last.ckpt`, refreshed every `every_n_steps` optimiser steps (0: never between
    validations), after every validation and epoch, at the end and when the run is interrupted (`LastCheckpoint`)."""
    callbacks: list[Checkpoint] = [
        ModelCheckpoint(
            dirpath=dirpath, filename="best", monitor=monitor, mode=mode, save_top_k=1,
            auto_insert_metric_name=False, enable_version_counter=False,
        ),
    ]  # fmt: skip
    if every_n_steps > 0:
        callbacks.append(PeriodicLastCheckpoint(dirpath, every_n_steps))
    callbacks.append(LastCheckpoint(dirpath))
    return callbacks
