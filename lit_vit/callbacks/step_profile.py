"""Where a training step's time goes: waiting for data, forward, backward, optimiser (`python -m lit_vit bench --mode
step`, or `--trainer.callbacks+=lit_vit.callbacks.StepProfile` in any fit).

The phases are cut at Lightning's public hooks, in the order the automatic-optimisation loop calls them:

    previous on_train_batch_end -> on_train_batch_start   data: fetch the batch from the loader (workers or the main
                                                          process), move it to the device, on_after_batch_transfer
                                                          (batch augmentation on the device happens here)
    on_train_batch_start -> on_before_backward            forward: training_step (model, loss, batch-level Mixup /
                                                          CutMix) and zero_grad
    on_before_backward -> on_after_backward               backward
    on_after_backward -> on_train_batch_end               optimiser: gradient clipping, optimizer.step, scheduler, EMA
                                                          and logging hooks

On CUDA every cut synchronises the device first (the host clock would otherwise charge queued kernels to a later
phase), which costs a little throughput: use it to find the slow part, not to measure peak speed. Gradient
accumulation steps without an optimiser step are counted as steps whose optimiser phase is ~0. The first `skip`
steps (loader start-up, warm-up) are left out.
"""

import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from lit_vit.errors import ConfigError
from lit_vit.files import write_text_atomic
from lit_vit.perf import synchronize

PHASES = ("data", "forward", "backward", "optimizer")


class StepProfile(L.Callback):
    """Per-phase time of training steps (data wait, forward, backward, optimiser), printed at the end of fit.

    Args:
        skip: first training steps of each fit left out (loader start-up, warm-up, compilation).
        print_summary: print the table when fit ends (rank 0).
        output: a JSON file the summary is written to when fit ends (rank 0), or null.
    """

    def __init__(self, skip: int = 2, print_summary: bool = True, output: str | None = None) -> None:
        super().__init__()
        if not (isinstance(skip, int) and skip >= 0):
            raise ConfigError(f"StepProfile skip is {skip!r} but must be an integer >= 0 (steps left out at start)")
        self.skip = skip
        self.print_summary = print_summary
        self.output = output
        self.times: dict[str, list[float]] = {phase: [] for phase in PHASES}
        self.steps_seen = 0
        self.batch_size: int | None = None
        self._cut: float | None = None
        self._marks: dict[str, float] = {}

    def _now(self, pl_module: L.LightningModule) -> float:
        synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._cut = self._now(pl_module)  # the epoch's first fetch (iterator start included) counts as data

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self._marks = {"start": self._now(pl_module)}
        if self.batch_size is None and isinstance(batch, (list, tuple)) and torch.is_tensor(batch[0]):
            self.batch_size = len(batch[0])

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._marks["before_backward"] = self._now(pl_module)

    def on_after_backward(self, trainer, pl_module) -> None:
        self._marks["after_backward"] = self._now(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        end = self._now(pl_module)
        marks, cut, self._cut = self._marks, self._cut, end
        self.steps_seen += 1
        if self.steps_seen <= self.skip or cut is None or "before_backward" not in marks:
            return  # warm-up, or a step without backward (manual optimisation that skipped it)
        after = marks.get("after_backward", marks["before_backward"])
        self.times["data"].append(marks["start"] - cut)
        self.times["forward"].append(marks["before_backward"] - marks["start"])
        self.times["backward"].append(after - marks["before_backward"])
        self.times["optimizer"].append(end - after)

    def summary(self) -> dict:
        """Median and mean milliseconds per phase and each phase's share of the mean step (mean, so that rare slow
        fetches, e.g. a worker's refill, count as they cost)."""
        steps = len(self.times["data"])
        if steps == 0:
            return {"steps": 0}
        means = {p: statistics.fmean(t) for p, t in self.times.items()}
        total = sum(means.values())
        return {
            "steps": steps,
            "batch_size": self.batch_size,
            "step_ms_mean": total * 1e3,
            "images_per_s": self.batch_size / total if self.batch_size and total else None,
            "phases": {
                p: {
                    "ms_mean": means[p] * 1e3,
                    "ms_median": statistics.median(self.times[p]) * 1e3,
                    "share": means[p] / total if total else float("nan"),
                }
                for p in PHASES
            },
        }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.print_summary:
            print(format_summary(self.summary()))
        if self.output:
            write_text_atomic(Path(self.output), json.dumps(self.summary(), indent=1))


def format_summary(summary: dict) -> str:
    if not summary.get("steps"):
        return "step profile: no training step measured (fewer steps than skip)"
    lines = [
        f"step profile over {summary['steps']} steps (mean step {summary['step_ms_mean']:.2f} ms"
        + (f", batch {summary['batch_size']})" if summary.get("batch_size") else ")"),
        "  phase       mean ms   median ms   share",
    ]
    for phase, row in summary["phases"].items():
        lines.append(f"  {phase:<10} {row['ms_mean']:8.2f}   {row['ms_median']:9.2f}   {row['share']:6.1%}")
    data = summary["phases"]["data"]["share"]
    if data > 0.10:
        lines.append(
            f"  waiting for data is {data:.0%} of a step: more DataLoader workers (--data.init_args.num_workers), "
            "the batched in-memory path, or a cache would help"
        )
    return "\n".join(lines)
