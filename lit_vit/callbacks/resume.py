"""Exact resume: what a checkpoint needs beyond Lightning's loops, model, optimiser and data position.

`ExactResume` (added to every lit_vit fit by the CLI; add it to your own Trainer for the same guarantee):

- **Random states of every process.** Each checkpoint stores, per rank, the torch (CPU and CUDA), numpy and Python
  random states at the step it was written; a resumed run restores them when training starts, so stochastic depth,
  dropout and any augmentation drawing from the global generators continue as if never interrupted. (lit_vit's own
  data pipelines draw from generators seeded by (seed, epoch, index), and their DataLoaders have a generator of
  their own, so loading data between two steps never moves the global state.)
- **Epoch-level training metrics.** The running sums of the module's training metrics (the torchmetrics `Metric`
  attributes whose names start with `train`, e.g. `train_acc1`) of an unfinished epoch are stored too, so the
  interrupted epoch's `train/acc1` covers the whole epoch, not only the batches after the resume.
- **Ctrl-C stops at a step boundary.** The first SIGINT during training asks the training loop to stop after the
  current step (the path Lightning takes for SIGTERM): last.ckpt then holds a consistent state, and the resumed run's
  steps and metrics.csv rows are numbered as in an uninterrupted run. A second Ctrl-C stops at once.

States written by a different number of processes than the resumed run has cannot be mapped to ranks: the run then
resumes with fresh random states and says so.
"""

import random
import signal
import sys
import threading
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torchmetrics import Metric

from lit_vit.lightning_compat import batches_trained_this_epoch, request_stop, set_update_count

CHECKPOINT_KEY = "lit_vit_rank_states"

# The signal that stopped the last fit through ExactResume (SIGINT), read by the CLI for its exit status and message.
stopped_by: dict[str, int | None] = {"signal": None}


def rng_states() -> dict[str, Any]:
    """This process's random states as tensors and plain containers (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss_next": gauss},
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = states["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _train_metrics(pl_module: L.LightningModule) -> dict[str, Metric]:
    return {n: m for n, m in pl_module.named_modules() if isinstance(m, Metric) and n.startswith("train")}


def _metric_states(pl_module: L.LightningModule) -> dict[str, dict[str, Any]]:
    out = {}
    for name, metric in _train_metrics(pl_module).items():
        states = {k: (v.detach().cpu().clone() if torch.is_tensor(v) else [t.detach().cpu() for t in v])
                  for k, v in metric.metric_state.items()}  # fmt: skip
        out[name] = {"states": states, "update_count": int(metric.update_count)}
    return out


def _set_metric_states(pl_module: L.LightningModule, saved: dict[str, dict[str, Any]]) -> None:
    metrics = _train_metrics(pl_module)
    for name, entry in saved.items():
        metric = metrics.get(name)
        if metric is None:
            continue
        for key, value in entry["states"].items():
            value = value.to(pl_module.device) if torch.is_tensor(value) else [t.to(pl_module.device) for t in value]
            setattr(metric, key, value)
        set_update_count(metric, entry["update_count"])


class ExactResume(Callback):
    """Stores and restores every rank's random states and the unfinished epoch's training-metric sums, and makes
    Ctrl-C stop training at a step boundary (see the module docstring)."""

    def __init__(self) -> None:
        self._pending: list[dict[str, Any]] | None = None
        self._previous_handler: Any = None
        self.sigint_trainer: L.Trainer | None = None

    # -- checkpoint ----------------------------------------------------------------------------------------------
    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit":
            return
        mine: dict[str, Any] = {"rng": rng_states()}
        done = batches_trained_this_epoch(trainer)
        if 0 < done < trainer.num_training_batches:  # an unfinished epoch: its metric sums continue after a resume
            mine["train_metrics"] = _metric_states(pl_module)
        # every rank calls this while a checkpoint is dumped (rank 0 writes it): gather the ranks' states
        if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
        else:
            gathered = [mine]
        checkpoint[CHECKPOINT_KEY] = gathered

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        self._pending = checkpoint.get(CHECKPOINT_KEY)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install_sigint(trainer)
        pending, self._pending = self._pending, None
        if not pending:
            return
        if len(pending) != trainer.world_size:
            if trainer.is_global_zero:
                print(
                    f"resume: the checkpoint holds the random states of {len(pending)} process(es) and this run has "
                    f"{trainer.world_size}: training continues with fresh random states (not bit for bit)",
                    file=sys.stderr,
                )
            return
        # restored here, after the sanity check and the loaders' set-up: nothing draws from the global generators
        # between this point and the first training step, as between the checkpoint and the next step of the
        # uninterrupted run
        state = pending[trainer.global_rank]
        set_rng_states(state["rng"])
        if "train_metrics" in state:
            _set_metric_states(pl_module, state["train_metrics"])

    # -- Ctrl-C ------------------------------------------------------------------------------------------------
    def _install_sigint(self, trainer: L.Trainer) -> None:
        stopped_by["signal"] = None
        if threading.current_thread() is not threading.main_thread():
            return
        self.sigint_trainer = trainer
        self._previous_handler = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        trainer = self.sigint_trainer
        if trainer is None or stopped_by["signal"] is not None:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now
        stopped_by["signal"] = signum
        request_stop(trainer)  # the training loop stops at the next step boundary, on every rank
        if trainer.is_global_zero:
            print(
                "\nCtrl-C: stopping after this step and saving last.ckpt (press Ctrl-C again to stop at once)",
                file=sys.stderr,
                flush=True,
            )

    def _restore_sigint(self) -> None:
        if self._previous_handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self._previous_handler)
        self._previous_handler, self.sigint_trainer = None, None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore_sigint()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_sigint()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_sigint()
