"""Deterministic, resumable sampling.

The order of an epoch is a function of (seed, epoch) and every sample's augmentation is seeded by
(seed, epoch, index): runs repeat exactly, epochs differ, the number of workers does not matter, and a run resumed
mid-epoch sees the rest of the same epoch.
"""

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class SeededSampler(DistributedSampler):
    """A DistributedSampler (so Lightning does not wrap it) that yields (index, augmentation seed) pairs."""

    def __init__(self, dataset: Dataset, shuffle: bool, seed: int, with_seeds: bool = True) -> None:
        distributed = dist.is_available() and dist.is_initialized()
        super().__init__(
            dataset,
            num_replicas=dist.get_world_size() if distributed else 1,
            rank=dist.get_rank() if distributed else 0,
            shuffle=shuffle,
            seed=seed,
        )
        self.with_seeds = with_seeds
        self._skip = 0

    def skip_once(self, num_samples: int) -> None:
        """Drop the first `num_samples` of the next epoch's order (they were consumed before an interruption)."""
        self._skip = num_samples

    def __iter__(self) -> Iterator[Any]:
        indices = list(super().__iter__())[self._skip :]
        self._skip = 0
        if not self.with_seeds:
            return iter(indices)
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])


class ResumableDataLoader(DataLoader):
    """A DataLoader that declares its sampling state, so Lightning treats it as resumable mid-epoch.

    The order is a pure function of (seed, epoch) and the position inside the epoch is restored by the DataModule
    (`ImageDataModule.load_state_dict`); Lightning stores this state in the checkpoint and, where it reloads loader
    states, this check refuses a resume on different data, which would silently change the order.
    """

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        return {"seed": sampler.seed, "epoch": sampler.epoch, "dataset_size": len(self.dataset)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict.get("dataset_size") != len(self.dataset) or state_dict.get("seed") != self.sampler.seed:
            raise RuntimeError(
                f"the checkpoint was written for a training set of {state_dict.get('dataset_size')} samples with "
                f"seed {state_dict.get('seed')}, but the data module now has {len(self.dataset)} samples with seed "
                f"{self.sampler.seed}; resume with the same data and seed, or start a new run"
            )
