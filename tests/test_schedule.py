"""The classification learning-rate schedule: linear warm-up to the peak, then cosine decay to lr * min_lr_ratio.

The formula is the one of DeiT / timm's CosineLRScheduler, per optimiser step (Loshchilov & Hutter, SGDR: Stochastic
Gradient Descent with Warm Restarts, ICLR 2017, without restarts); `warmup_cosine` gives the multiplier of the peak.
"""

import math

import lightning as L
import pytest
import torch
from conftest import TINY_VIT

from lit_vit.data import DigitsDataModule
from lit_vit.errors import ConfigError
from lit_vit.models import VisionTransformer
from lit_vit.modules import ImageClassifier
from lit_vit.modules.optim import warmup_cosine


def test_warmup_rises_linearly_to_the_peak_at_its_last_step():
    assert warmup_cosine(0, 10, 110, 0.1) == pytest.approx(0.1)  # step 0 already trains, at 1/warmup of the peak
    assert warmup_cosine(4, 10, 110, 0.1) == pytest.approx(0.5)
    assert warmup_cosine(9, 10, 110, 0.1) == pytest.approx(1.0)  # the end of the warm-up is the peak
    assert warmup_cosine(10, 10, 110, 0.1) == pytest.approx(1.0)  # the cosine starts at the peak
    warmup = [warmup_cosine(s, 10, 110, 0.1) for s in range(10)]
    assert all(b - a == pytest.approx(0.1) for a, b in zip(warmup, warmup[1:]))


def test_cosine_passes_half_way_at_the_middle_and_ends_at_min_lr_ratio():
    # (step - warmup) / (total - warmup) of the way: min + (1 - min) * (1 + cos(pi * progress)) / 2
    assert warmup_cosine(35, 10, 110, 0.1) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert warmup_cosine(60, 10, 110, 0.1) == pytest.approx(0.55)  # the middle: half-way between peak and minimum
    assert warmup_cosine(60, 10, 110, 0.0) == pytest.approx(0.5)
    assert warmup_cosine(110, 10, 110, 0.1) == pytest.approx(0.1)  # after the last step: peak * min_lr_ratio
    assert warmup_cosine(110, 10, 110, 0.0) == 0.0
    assert warmup_cosine(500, 10, 110, 0.1) == pytest.approx(0.1)  # never below the minimum, never back up
    assert warmup_cosine(0, 0, 100, 0.1) == 1.0  # no warm-up: the first step is at the peak


@pytest.mark.parametrize("min_lr_ratio", [0.0, 0.01, 0.5])
def test_the_decay_after_the_warmup_is_monotone(min_lr_ratio):
    values = [warmup_cosine(s, 7, 60, min_lr_ratio) for s in range(7, 61)]
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(min_lr_ratio)
    assert all(b < a for a, b in zip(values, values[1:]))  # strictly: every step lowers the lr
    assert all(min_lr_ratio <= v <= 1.0 for v in values)


class RecordLR(L.Callback):
    """The lr of every parameter group at each optimiser step (the lr the step trains with)."""

    def __init__(self) -> None:
        self.steps: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def fit_lrs(**module_kwargs) -> tuple[list[list[float]], list[float], list[float]]:
    """A 3-epoch x 4-batch fit (12 optimiser steps): the lrs per step, after the fit, and the groups' peaks."""
    torch.manual_seed(0)
    record = RecordLR()
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=4, limit_val_batches=0, accelerator="cpu", logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[record],
    )  # fmt: skip
    module = ImageClassifier(VisionTransformer(**TINY_VIT["init_args"]), **module_kwargs)
    trainer.fit(module, DigitsDataModule(batch_size=8))
    groups = trainer.optimizers[0].param_groups
    return record.steps, [g["lr"] for g in groups], [g["initial_lr"] for g in groups]


def expected_lr(peak: float, step: int, warmup: int, total: int, min_lr_ratio: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (min_lr_ratio + (1 - min_lr_ratio) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / 2)


@pytest.fixture(scope="module")
def fits() -> dict:
    """The same fit with the warm-up given as 1 epoch, as 4 steps and as half an epoch."""
    common = dict(lr=1e-3, head_lr=1e-2, min_lr_ratio=0.1)
    return {
        "1 epoch": fit_lrs(warmup_epochs=1, **common),
        "4 steps": fit_lrs(warmup_steps=4, **common),
        "0.5 epochs": fit_lrs(warmup_epochs=0.5, **common),
    }


def test_a_fit_follows_the_schedule_per_step_and_every_group_ends_at_its_peak_times_min_lr_ratio(fits):
    steps, final, peaks = fits["1 epoch"]
    assert sorted(set(peaks)) == [1e-3, 1e-2]  # the head has its own peak and follows the same schedule
    assert len(steps) == 12
    for step, lrs in enumerate(steps):
        for lr, peak in zip(lrs, peaks):
            assert lr == pytest.approx(expected_lr(peak, step, 4, 12, 0.1), rel=1e-6), (step, peak)
    lr = [lrs[peaks.index(1e-3)] for lrs in steps]
    assert lr[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])  # 1 epoch = 4 steps, the peak at its last
    assert max(lr) == pytest.approx(1e-3)
    assert all(b < a for a, b in zip(lr[4:], lr[5:]))  # then it only goes down
    assert lr[8] == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half-way through the cosine: half-way down
    assert final == pytest.approx([p * 0.1 for p in peaks])  # the schedule ends at peak * min_lr_ratio


def test_warmup_in_epochs_equals_the_same_warmup_in_steps(fits):
    assert fits["1 epoch"] == fits["4 steps"]
    steps, _, peaks = fits["0.5 epochs"]  # fractions of an epoch round to whole steps: 2 here
    lr = [lrs[peaks.index(1e-3)] for lrs in steps]
    assert lr[:3] == pytest.approx([5e-4, 1e-3, expected_lr(1e-3, 2, 2, 12, 0.1)])
    assert lr[-1] == pytest.approx(expected_lr(1e-3, 11, 2, 12, 0.1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(warmup_steps=-1), "warm-up must be >= 0"),
        (dict(warmup_epochs=-0.5), "warm-up must be >= 0"),
        (dict(warmup_steps=4, warmup_epochs=1.0), "give the warm-up once"),
        (dict(min_lr_ratio=-0.1), r"min_lr_ratio must be in \[0, 1\].*got -0.1"),
        (dict(min_lr_ratio=1.5), r"min_lr_ratio must be in \[0, 1\].*got 1.5"),
    ],
)
def test_bad_warmup_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ImageClassifier(VisionTransformer(**TINY_VIT["init_args"]), **kwargs)
