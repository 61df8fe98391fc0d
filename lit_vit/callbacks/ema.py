"""EMA of the weights: Lightning's EMAWeightAveraging with checked options.

While it is on, validation runs on the averaged weights (the callback swaps them in and out around each validation
epoch), every checkpoint holds the averaged weights in `state_dict` (the trained ones in `current_model_state`, the
average's step count in `averaging_state`), so `validate / test / predict --ckpt_path best|last` and
`ImageClassifier.load_from_checkpoint` use the average, and `fit --ckpt_path last` restores both. At the end of
training the model keeps the averaged weights.

Unlike Lightning's callback, the average is built at `on_fit_start` rather than in `setup`: the callbacks' setup runs
before the module's, where ImageClassifier sizes its head from the data, and before the strategy moves the module to
its device. A resumed fit's average is restored there too, from the checkpoint stashed by `on_load_checkpoint`.
"""

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging

from lit_vit.errors import ConfigError
from lit_vit.lightning_compat import averaged_model, build_average_model, update_average_now


# WeightAveraging keeps the averaged model and its options in private attributes: building the average in on_fit_start
# and updating it in state_dict go through lit_vit.lightning_compat.
class EMA(EMAWeightAveraging):
    """Exponential moving average of the model's weights and buffers, updated after optimiser steps.

    Args:
        decay: weight of the old average per update, ema = decay * ema + (1 - decay) * weights (DeiT: 0.99996 per
            step at batch 1024; about 1 - 1 / (10 * steps per epoch) for short runs).
        update_every_n_steps: update the average every N optimiser steps.
        update_starting_at_step: first optimiser step (0-based) that updates the average (null: from the first).
        device: where the average lives (null: with the model; "cpu" saves GPU memory).
    """

    def __init__(
        self,
        decay: float = 0.9999,
        update_every_n_steps: int = 1,
        update_starting_at_step: int | None = None,
        device: str | None = None,
    ) -> None:
        if not 0 < decay < 1:
            raise ConfigError(f"EMA decay must be in (0, 1) (e.g. 0.9999), got {decay}; set the callback's decay")
        if update_every_n_steps < 1:
            raise ConfigError(
                f"EMA update_every_n_steps must be an integer >= 1, got {update_every_n_steps}; set it to 1 or more"
            )
        if update_starting_at_step is not None and update_starting_at_step < 0:
            raise ConfigError(
                f"EMA update_starting_at_step must be >= 0 or null, got {update_starting_at_step}; set it to null "
                "to start at the first step"
            )
        super().__init__(
            device=device,
            decay=decay,
            update_every_n_steps=update_every_n_steps,
            update_starting_at_step=update_starting_at_step,
        )
        self.decay = decay
        self.checkpoint_to_restore: dict[str, Any] | None = None
        self.fit_trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pass  # see the module docstring: the average is built in on_fit_start

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # outside fit the checkpoint's state_dict (the average) is what the module loads: nothing else to do
        if trainer.state.fn == "fit":
            self.checkpoint_to_restore = checkpoint

    def state_dict(self) -> dict[str, Any]:
        # A checkpoint written after this step's optimiser step but before this callback's on_train_batch_end would
        # miss the step's update, and a run resumed from it would never make it: make it now (on_train_batch_end then
        # sees it done). Lightning runs its Checkpoint callbacks (lit_vit's best.ckpt / last.ckpt) after the others,
        # but a plain callback listed before this one that saves in on_train_batch_end, or Ctrl-C between the
        # optimiser step and this hook (LastCheckpoint saves on it), would write such a checkpoint. Lightning asks for
        # this state before on_save_checkpoint.
        if self.fit_trainer is not None:
            update_average_now(self, self.fit_trainer)
        return super().state_dict()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.fit_trainer = trainer
        build_average_model(self, pl_module)
        if self.checkpoint_to_restore is not None:
            # average <- state_dict, module <- current
            super().on_load_checkpoint(trainer, pl_module, self.checkpoint_to_restore)
            self.checkpoint_to_restore = None


def averaged_module(trainer: L.Trainer, pl_module: L.LightningModule) -> L.LightningModule:
    """The module to evaluate: the averaged copy while a weight-averaging callback (EMA) keeps one, else pl_module."""
    for callback in getattr(trainer, "callbacks", ()):
        average = averaged_model(callback)
        if isinstance(callback, WeightAveraging) and average is not None:
            return average.module
    return pl_module
