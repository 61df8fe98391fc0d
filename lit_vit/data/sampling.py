"""Deterministic, resumable sampling, and the one mid-epoch resume mechanism of every lit_vit DataModule.

The order of an epoch is a function of (seed, epoch) and every sample's augmentation is seeded by
(seed, epoch, index), or, where whole batches are augmented at once (lit_vit.data.batch_augment), every batch's by
(seed, epoch, rank, batch position): runs repeat exactly, epochs differ, the number of workers does not matter, and a
run resumed mid-epoch sees the rest of the same epoch (`ResumableDataModule`).
"""

import math
import signal
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lit_vit.errors import ConfigError
from lit_vit.lightning_compat import batches_trained_this_epoch


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

    def order(self) -> list[int]:
        """This process's indices of the current epoch, before any skip (a subclass may define another order)."""
        return list(super().__iter__())

    def __iter__(self) -> Iterator[Any]:
        indices = self.order()[self._skip :]
        self._skip = 0
        if not self.with_seeds:
            return iter(indices)
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])


def batch_seed(seed: int, epoch: int, rank: int, position: int) -> int:
    """The seed of one training batch: a function of (data seed, epoch, rank, position of the batch in the epoch)."""
    return int(np.random.SeedSequence([seed, epoch, rank, position, 1]).generate_state(1)[0])


class BatchSeededSampler(SeededSampler):
    """SeededSampler's order and skip, yielding whole batches: (index tensor, batch seed) for training (`with_seeds`),
    or index tensors (evaluation). With a `DataLoader(batch_size=None)` each item is one batch."""

    def __init__(
        self, dataset: Dataset, shuffle: bool, seed: int, batch_size: int, drop_incomplete: bool, with_seeds: bool
    ) -> None:
        super().__init__(dataset, shuffle=shuffle, seed=seed, with_seeds=with_seeds)
        self.batch_size, self.drop_incomplete = batch_size, drop_incomplete

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        return n // b if self.drop_incomplete else math.ceil(n / b)

    def __iter__(self) -> Iterator[Any]:
        skip, self._skip = self._skip, 0
        indices = self.order()[skip:]
        first = skip // self.batch_size  # resumed mid-epoch: the skipped samples were whole batches
        for k, start in enumerate(range(0, len(indices), self.batch_size)):
            chunk = indices[start : start + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_incomplete:
                return
            idx = torch.tensor(chunk, dtype=torch.long)
            yield (idx, batch_seed(self.seed, self.epoch, self.rank, first + k)) if self.with_seeds else idx


class ResumableDataLoader(DataLoader):
    """A DataLoader that declares its sampling state, so Lightning treats it as resumable mid-epoch.

    The order is a pure function of (seed, epoch) and the position inside the epoch is restored by the DataModule
    (`ResumableDataModule.load_state_dict`); Lightning stores this state in the checkpoint and, where it reloads loader
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


def ignore_sigint_in_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: Ctrl-C reaches every process of the terminal's group; a worker leaves it to the main
    process (which stops at the next step boundary and shuts the workers down) instead of dying under the epoch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _own_rng(seed: int, loader_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A DataLoader draws its workers' base seed at every `iter()`; with a generator of its own that draw leaves the
    global torch generator alone (so a resumed run's random states equal an uninterrupted run's, see
    lit_vit.callbacks.resume), and its workers ignore Ctrl-C."""
    loader_kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    if loader_kwargs.get("num_workers", 0) > 0:
        loader_kwargs.setdefault("worker_init_fn", ignore_sigint_in_worker)
    return loader_kwargs


class ResumableDataModule(L.LightningDataModule):
    """Base of the classification and image-text DataModules: seeded loaders and exact mid-epoch resume.

    A subclass passes `batch_size`, `eval_batch_size` and `seed` to this constructor, which checks them, and builds its
    loaders with `train_loader` and `eval_loader`. The position inside the epoch is saved with every checkpoint as
    this DataModule's state (`{"epoch", "batches_done", "seed"}`, stored by Lightning under the class name). On
    resume Lightning restores it before it builds the training loader, whose sampler then drops the
    `batches_done * batch_size` samples of the interrupted epoch that were trained on: the resumed run sees exactly
    the batches an uninterrupted run sees.
    """

    def __init__(self, batch_size: int, eval_batch_size: int | None, seed: int) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
        if eval_batch_size is not None and eval_batch_size < 1:
            raise ConfigError(f"eval_batch_size must be a positive integer, got {eval_batch_size} (unset: batch_size)")
        self.batch_size = batch_size
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.seed = seed
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return {}
        done = batches_trained_this_epoch(trainer)
        if done >= trainer.num_training_batches:  # the epoch is complete: the resumed run starts the next one
            done = 0
        return {"epoch": trainer.current_epoch, "batches_done": done, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        if state_dict and state_dict.get("seed") != self.seed:
            raise ConfigError(
                f"the checkpoint was trained with data seed {state_dict.get('seed')} but data.seed is {self.seed}; "
                "resume with the same seed (or start a new run)"
            )
        self._resume = state_dict if state_dict.get("batches_done", 0) > 0 else None

    def train_loader(
        self, dataset: Dataset, sampler: SeededSampler | None = None, batched: bool = False, **loader_kwargs: Any
    ) -> "ResumableDataLoader":
        """The shuffled training loader (full batches only); the first one after a resume skips the trained part.
        `sampler`: another order (a SeededSampler subclass, e.g. shard by shard), default every sample shuffled.
        `batched`: `dataset` is indexed by whole batches (lit_vit.data.batch_augment.TensorSplit), each with the seed
        of its position in the epoch (BatchSeededSampler); the loader then runs in this process, without collation."""
        if batched:
            sampler = BatchSeededSampler(
                dataset, shuffle=True, seed=self.seed, batch_size=self.batch_size, drop_incomplete=True, with_seeds=True
            )
        sampler = SeededSampler(dataset, shuffle=True, seed=self.seed) if sampler is None else sampler
        resume, self._resume = self._resume, None
        if resume is not None:
            sampler.set_epoch(resume["epoch"])
            sampler.skip_once(resume["batches_done"] * self.batch_size)
        if batched:
            return ResumableDataLoader(dataset, batch_size=None, sampler=sampler, **_own_rng(self.seed, loader_kwargs))
        return ResumableDataLoader(
            dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True, **_own_rng(self.seed, loader_kwargs)
        )

    def eval_loader(self, dataset: Dataset, batched: bool = False, **loader_kwargs: Any) -> DataLoader:
        """A loader in dataset order, sharded over processes, of `eval_batch_size` (`batched`: as in train_loader)."""
        if batched:
            sampler: SeededSampler = BatchSeededSampler(
                dataset, shuffle=False, seed=self.seed, batch_size=self.eval_batch_size, drop_incomplete=False,
                with_seeds=False,
            )  # fmt: skip
            return DataLoader(dataset, batch_size=None, sampler=sampler, **_own_rng(self.seed, loader_kwargs))
        sampler = SeededSampler(dataset, shuffle=False, seed=self.seed, with_seeds=False)
        return DataLoader(
            dataset, batch_size=self.eval_batch_size, sampler=sampler, **_own_rng(self.seed, loader_kwargs)
        )
