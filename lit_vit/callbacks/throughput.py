"""Training throughput (samples/s) and, where the device's peak is known, model FLOPs utilisation."""

import time

import lightning as L
import torch

from lit_vit.perf import count_flops, peak_flops, synchronize


class ThroughputLogger(L.Callback):
    """Logs `throughput/samples_per_s`, `throughput/step_time_s`, `throughput/tflops_per_s`, `throughput/mfu` and
    `throughput/train_flops`, the training compute spent so far (FLOPs per sample x samples trained, kept across
    resumes; also logged at the end of every training epoch, so a run's last value is its total compute).

    Unlike Lightning's ThroughputMonitor, which synchronises the GPU after every batch, this callback synchronises
    only at the trainer's logging steps (`log_every_n_steps`) and averages over the steps in between. FLOPs are
    counted once, on the first training batch, with FlopCounterMode on the real model (forward and backward of one
    sample, times the batch size; attention included). Validation time is excluded; checkpoint writing is not.
    MFU = achieved FLOP/s / the device's dense peak for the trainer's precision (from lit_vit.perf.PEAK_TFLOPS, or
    `peak_tflops`); it is not logged when the peak is unknown, as on any CPU.

    It also keeps, across resumes (in the checkpoint), the run's totals that the ablation sweep records for every
    run: `images_per_second` (samples trained / training time, validation excluded) and `wall_seconds` (time
    spent in fit).

    Args:
        peak_tflops: peak TFLOP/s of one device for MFU (default: looked up from the GPU name and the precision).
    """

    def __init__(self, peak_tflops: float | None = None) -> None:
        super().__init__()
        self.peak_tflops = peak_tflops
        self.flops_per_sample: int | None = None
        self.peak: float | None = None
        self._t0: float | None = None
        self._samples = 0
        self._steps = 0
        self.samples_trained = 0  # since the run began, resumes included (saved in the checkpoint)
        self.train_seconds = 0.0  # training time of those samples (validation excluded), resumes included
        self.fit_seconds = 0.0  # time spent in fit by earlier sessions of the run
        self._fit_start: float | None = None
        self._seen_step = 0  # trainer.global_step at the last training batch

    @property
    def images_per_second(self) -> float:
        return self.samples_trained / self.train_seconds if self.train_seconds else float("nan")

    @property
    def wall_seconds(self) -> float:
        return self.fit_seconds + (time.perf_counter() - self._fit_start if self._fit_start is not None else 0.0)

    def state_dict(self) -> dict:
        return {
            "samples_trained": self.samples_trained,
            "train_seconds": self.train_seconds,
            "fit_seconds": self.wall_seconds,
        }

    def load_state_dict(self, state_dict: dict) -> None:
        self.samples_trained = state_dict.get("samples_trained", 0)
        self.train_seconds = state_dict.get("train_seconds", 0.0)
        self.fit_seconds = state_dict.get("fit_seconds", 0.0)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_seconds, self._fit_start = self.wall_seconds, None

    def _log(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step - 1)  # the step Lightning logs this batch at

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.peak, _ = peak_flops(trainer.strategy.root_device, str(trainer.precision), self.peak_tflops)
        self._seen_step = trainer.global_step
        self._restart(trainer)

    def _restart(self, trainer: L.Trainer) -> None:
        synchronize(trainer.strategy.root_device)
        self._t0, self._samples, self._steps = time.perf_counter(), 0, 0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.flops_per_sample is None:
            x = batch[0] if isinstance(batch, list | tuple) else batch
            model = getattr(pl_module, "backbone", pl_module)
            # counting runs dropout / drop path once more: keep the random stream of the run unchanged
            devices = [trainer.strategy.root_device] if trainer.strategy.root_device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                self.flops_per_sample = count_flops(model, x[:1], train=True)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        x = batch[0] if isinstance(batch, list | tuple) else batch
        self._samples += len(x) * trainer.world_size
        self.samples_trained += len(x) * trainer.world_size
        self._steps += 1
        stepped, self._seen_step = trainer.global_step != self._seen_step, trainer.global_step
        if not stepped or trainer.global_step % trainer.log_every_n_steps:
            return  # a gradient-accumulation batch (no optimiser step), or not a logging step
        elapsed = self._close_interval(trainer)
        samples_per_s = self._samples / elapsed
        metrics = {"throughput/samples_per_s": samples_per_s, "throughput/step_time_s": elapsed / self._steps}
        if self.flops_per_sample:
            flops_per_s = self.flops_per_sample * samples_per_s
            metrics["throughput/tflops_per_s"] = flops_per_s / 1e12
            if self.peak:
                metrics["throughput/mfu"] = flops_per_s / (self.peak * trainer.world_size)
            metrics["throughput/train_flops"] = float(self.flops_per_sample * self.samples_trained)
        self._log(trainer, metrics)
        self._restart(trainer)

    def _close_interval(self, trainer: L.Trainer) -> float:
        """Synchronise, add the interval since the last restart to the training time, and return its length."""
        synchronize(trainer.strategy.root_device)
        elapsed = time.perf_counter() - self._t0
        self.train_seconds += elapsed
        return elapsed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.flops_per_sample:
            self._log(trainer, {"throughput/train_flops": float(self.flops_per_sample * self.samples_trained)})

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit" and self._t0 is not None:
            self._close_interval(trainer)  # the training time since the last restart; validation is not counted

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._restart(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._t0 is not None:
            self._close_interval(trainer)
            self._t0 = None
