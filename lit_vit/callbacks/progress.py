"""`<run dir>/progress.json`: where a run is, for a process that watches it from outside (the ablation sweep's view).

The file is rewritten atomically (a temporary file renamed over it) at the start of training, after every validation
and every training epoch, and when the run stops with an error, so a reader never sees half a file. Only global rank
0 writes. Fields: state (running / failed / interrupted), pid, host, worker (the sweep worker's index, or null),
started and updated (Unix times), resumed (trained steps at the start), epoch (epochs finished), max_epochs, step,
val_acc1 (the last validation's top-1, a fraction) and error (the failure's one-line message).
"""

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from lit_vit.files import write_text_atomic

PROGRESS_FILE = "progress.json"
# set by the sweep for its worker processes: the index shown as "running on worker <i>"
WORKER_ENV = "LIT_VIT_SWEEP_WORKER"


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((Path(run_dir) / PROGRESS_FILE).read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
        return None


def write_progress(run_dir: Path, **values: Any) -> None:
    """Updates `<run_dir>/progress.json` with `values` (atomically)."""
    run_dir = Path(run_dir)
    state = {**(read_progress(run_dir) or {}), **values, "updated": time.time()}
    write_text_atomic(run_dir / PROGRESS_FILE, json.dumps(state))


class RunProgress(Callback):
    """Keeps `<default_root_dir>/progress.json` up to date during a fit (see the module docstring)."""

    def _write(self, trainer: L.Trainer, **values: Any) -> None:
        if trainer.is_global_zero and os.path.isdir(trainer.default_root_dir):
            write_progress(Path(trainer.default_root_dir), step=trainer.global_step, **values)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        worker = os.environ.get(WORKER_ENV)
        self._write(
            trainer,
            state="running",
            pid=os.getpid(),
            host=socket.gethostname(),
            worker=int(worker) if worker else None,
            started=time.time(),
            resumed=trainer.global_step,
            epoch=trainer.current_epoch,
            max_epochs=trainer.max_epochs,
            error=None,
        )

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        acc1 = trainer.callback_metrics.get("val/acc1")
        if not trainer.sanity_checking and acc1 is not None:
            self._write(trainer, val_acc1=float(acc1))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, epoch=trainer.current_epoch + 1)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        interrupted = isinstance(exception, KeyboardInterrupt | SystemExit) or "SIGTERM" in type(exception).__name__
        message = (str(exception).strip().splitlines() or [""])[0]
        error = f"{type(exception).__name__}: {message}" if message else type(exception).__name__
        self._write(trainer, state="interrupted" if interrupted else "failed", error=error)
