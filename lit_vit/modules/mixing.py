"""Mixup / CutMix on the training batch (torchvision.transforms.v2), with label smoothing folded into soft targets."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from lit_vit.errors import ConfigError
from lit_vit.options import options_from


@dataclass
class Mixup:
    """Batch mixing of training images and their labels (DeiT: mixup_alpha 0.8, cutmix_alpha 1.0, prob 1.0,
    switch_prob 0.5); the model's label_smoothing is folded into the mixed soft targets. Validation is untouched.

    Args:
        mixup_alpha: Beta(alpha, alpha) of the Mixup weight; 0 turns Mixup off.
        cutmix_alpha: Beta(alpha, alpha) of the CutMix box area; 0 turns CutMix off.
        prob: probability that a batch is mixed at all.
        switch_prob: with both on, probability of CutMix rather than Mixup for a mixed batch.
    """

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(
                    f"mixup.{name} is {value} but must be >= 0 (0: off; DeiT 0.8 / 1.0); "
                    f"set --model.init_args.mixup.{name}"
                )
        if self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ConfigError(
                "mixup has mixup_alpha 0 and cutmix_alpha 0, which mixes nothing; set one of them > 0 "
                "or set --model.init_args.mixup null"
            )
        for name in ("prob", "switch_prob"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ConfigError(
                    f"mixup.{name} is {value} but must be a probability in [0, 1]; set --model.init_args.mixup.{name}"
                )


def as_mixup(value: "Mixup | dict | None") -> Mixup | None:
    """The options from a dataclass or its dict (hyperparameters read back from a checkpoint)."""
    return options_from(Mixup, value, "mixup")


class BatchMixer(nn.Module):
    """(images, int labels) -> (mixed images, soft targets whose rows sum to 1).

    torchvision's MixUp / CutMix pair each image with its neighbour in the batch (a roll by one) and draw from the
    global torch RNG; here they run inside `fork_rng` seeded by (seed, step, rank), so a batch is mixed the same way
    in a run resumed mid-epoch as in an uninterrupted one, and the process RNG (dropout, drop path) is left alone.
    """

    def __init__(self, options: Mixup, num_classes: int, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.options, self.num_classes, self.label_smoothing = options, num_classes, label_smoothing
        self.mixup = v2.MixUp(alpha=options.mixup_alpha, num_classes=num_classes) if options.mixup_alpha else None
        self.cutmix = v2.CutMix(alpha=options.cutmix_alpha, num_classes=num_classes) if options.cutmix_alpha else None

    def smooth(self, targets: torch.Tensor) -> torch.Tensor:
        """Label smoothing on (soft) targets: the same as mixing smoothed one-hot labels (the map is linear)."""
        return targets * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes

    def forward(self, x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)  # the CPU generator only (the mixing draws on the CPU)
            mix = None
            if float(torch.rand(())) < self.options.prob:
                if self.mixup is not None and self.cutmix is not None:
                    mix = self.cutmix if float(torch.rand(())) < self.options.switch_prob else self.mixup
                else:
                    mix = self.mixup or self.cutmix
            if mix is None:
                targets = nn.functional.one_hot(y, self.num_classes)
            else:
                x, targets = mix(x, y)
        return x, self.smooth(targets.float())


def step_seed(seed: int, step: int, rank: int) -> int:
    """A seed per (run seed, optimiser step, rank)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])
