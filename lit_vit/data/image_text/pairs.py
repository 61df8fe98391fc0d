"""Image-text pairs for ViLT pre-training from CSV / JSONL files and WebDataset-style tar shards, in a shard-by-shard
order that resumes mid-epoch exactly (`ShardSampler`, `PairsDataModule`)."""

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_vit.data.image_text.datamodule import ImageTextDataModule
from lit_vit.data.image_text.shards import (
    BadShardError,
    ShardImages,
    expand_braces,
    index_shard,
    read_pairs_table,
)
from lit_vit.data.image_text.sources import ImageFiles, ImageSource, SplitRecords
from lit_vit.data.sampling import SeededSampler
from lit_vit.errors import ConfigError


class ShardSampler(SeededSampler):
    """The training order of pairs stored unit by unit (tar shards, blocks of a CSV): a `SeededSampler` whose
    `order()` reads shard by shard, so it resumes through the same `skip_once` as every lit_vit sampler.

    The order of an epoch is a function of (seed, epoch, ranks, workers): the units are permuted by (seed, epoch) and
    the pairs inside each unit by (seed, epoch, unit) (or kept in file order); this sequence is cut into
    ranks x workers equal, contiguous stretches ("slots": slot = rank * workers + worker), each a whole number of
    batches. Rank r yields its workers' stretches batch by batch, interleaved (worker 0's first batch, worker 1's
    first batch, ...): the DataLoader hands batch k to worker k % workers, so every worker reads only its own stretch
    of shards, and every rank has the same number of batches (DDP needs it). The pairs after the last full stretch
    (fewer than ranks x workers x batch_size) are left out of that epoch; the permutation changes every epoch.

    Args:
        dataset: the pairs, unit after unit (`sum(unit_sizes) == len(dataset)`).
        unit_sizes: pairs per unit, in dataset order.
        seed: seed of the order (and the per-sample augmentation seeds).
        batch_size: per-device batch size.
        num_workers: DataLoader workers per rank (0 counts as one).
        shuffle_within: shuffle the pairs inside each unit (else file order).
        unit_names: names of the units, for `position()` (default: their numbers).
        num_replicas, rank: the process group (default: from torch.distributed, one process without it).
    """

    def __init__(
        self,
        dataset: Dataset,
        unit_sizes: Sequence[int],
        seed: int,
        batch_size: int,
        num_workers: int,
        shuffle_within: bool = True,
        unit_names: Sequence[str] | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
    ) -> None:
        super().__init__(dataset, shuffle=True, seed=seed)
        if sum(unit_sizes) != len(dataset):
            raise ValueError(f"unit sizes add up to {sum(unit_sizes)}, the dataset has {len(dataset)} pairs")
        self.num_replicas = self.num_replicas if num_replicas is None else num_replicas
        self.rank = self.rank if rank is None else rank
        self.unit_sizes = np.asarray(unit_sizes, dtype=np.int64)
        self.unit_starts = np.concatenate([[0], np.cumsum(self.unit_sizes)[:-1]])
        self.unit_names = list(unit_names) if unit_names is not None else [str(i) for i in range(len(unit_sizes))]
        self.batch_size, self.workers, self.shuffle_within = batch_size, max(1, num_workers), shuffle_within
        self.slots = self.num_replicas * self.workers
        self.batches_per_slot = len(dataset) // (self.slots * batch_size)
        if self.batches_per_slot == 0:
            raise ConfigError(
                f"{len(dataset)} training pairs are fewer than ranks x workers x batch_size = {self.num_replicas} x "
                f"{self.workers} x {batch_size}; lower data.batch_size or data.num_workers"
            )
        self.stretch = self.batches_per_slot * batch_size
        self.num_samples = self.workers * self.stretch  # this rank's pairs per epoch (DistributedSampler's __len__)
        self.total_size = self.num_samples * self.num_replicas
        self.left_out = len(dataset) - self.total_size

    def unit_order(self) -> np.ndarray:
        """The units in this epoch's order."""
        return np.random.default_rng([self.seed, self.epoch]).permutation(len(self.unit_sizes))

    def epoch_order(self) -> np.ndarray:
        """Every pair of the dataset in this epoch's order (all ranks' stretches, then what is left out)."""
        parts = []
        for u in self.unit_order().tolist():
            n = int(self.unit_sizes[u])
            inner = np.random.default_rng([self.seed, self.epoch, u]).permutation(n) if self.shuffle_within else None
            parts.append(self.unit_starts[u] + (np.arange(n) if inner is None else inner))
        return np.concatenate(parts)

    def slot_indices(self, slot: int) -> np.ndarray:
        """The pairs slot `slot` (= rank * workers + worker) reads this epoch, in order."""
        return self.epoch_order()[slot * self.stretch : (slot + 1) * self.stretch]

    def order(self) -> list[int]:
        order = self.epoch_order()
        mine = order[self.rank * self.num_samples : (self.rank + 1) * self.num_samples]
        # (workers, batches, batch) -> (batches, workers, batch): batch k of this rank is worker k % workers's
        return mine.reshape(self.workers, self.batches_per_slot, self.batch_size).transpose(1, 0, 2).ravel().tolist()

    def position(self, batches_done: int) -> list[tuple[int, str, int]]:
        """Where each of this rank's workers continues after `batches_done` batches of the epoch: (worker, unit
        name, pairs of that unit already read this epoch)."""
        units = self.unit_order()
        ends = np.cumsum(self.unit_sizes[units])
        out = []
        for w in range(self.workers):
            done = (batches_done - w + self.workers - 1) // self.workers  # batches w, w + W, ... are worker w's
            at = (self.rank * self.workers + w) * self.stretch + min(done, self.batches_per_slot) * self.batch_size
            k = min(bisect_right(ends.tolist(), at), len(units) - 1)
            out.append((w, self.unit_names[units[k]], int(at - (ends[k] - self.unit_sizes[units[k]]))))
        return out


@dataclass
class _Source:
    images: ImageSource
    captions: list[list[str]]
    unit_names: list[str]
    unit_images: list[int]  # images per unit


class ConcatImages:
    """Several image sources as one (an ImageSource): image k of the concatenation."""

    def __init__(self, sources: Sequence[ImageSource]) -> None:
        self.sources = list(sources)
        self.ends = np.cumsum([len(s) for s in self.sources]).tolist()

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def load(self, index: int) -> np.ndarray | None:
        i = bisect_right(self.ends, index)
        return self.sources[i].load(index - (self.ends[i - 1] if i else 0))


class PairsDataModule(ImageTextDataModule):
    """(image, caption) pairs for ViLT pre-training from CSV / JSONL files and WebDataset-style tar shards.

    Every split is a list of sources, concatenated: a CSV (columns image, caption), a JSONL (`{"image", "caption"}`
    or `"captions": [...]` per line; image paths relative to the file's folder) or a shard pattern
    (`shards/{000000..000099}.tar`; write shards with `python -m lit_vit shards`). Training reads shard by shard in an
    order that is a function of (seed, epoch, ranks, workers), every (rank, worker) its own stretch of shards, and a run
    resumed mid-epoch continues with the same order (`ShardSampler`; the layout is in data/README.md). A shard that
    cannot be read, or a missing image, stops before training with its name; incomplete samples (an image without
    text or text without an image) are skipped and counted.

    Args:
        train_sources: training sources (CSV, JSONL, shard patterns), relative to root unless absolute.
        val_sources: validation sources.
        test_sources: test sources (default: val_sources).
        root: folder the relative source paths start from.
        block_size: CSV / JSONL sources are cut into blocks of this many images, the unit of the order (as a shard).
        shuffle_within_shard: shuffle the pairs inside each shard / block (else file order).
        skip_bad_shards: skip shards that cannot be read, with a warning naming them and the count, instead of failing.
    """

    def __init__(
        self,
        train_sources: list[str],
        val_sources: list[str],
        test_sources: list[str] | None = None,
        root: str = "data",
        block_size: int = 1000,
        shuffle_within_shard: bool = True,
        skip_bad_shards: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        if block_size < 1:
            raise ConfigError(f"block_size must be a positive integer, got {block_size}")
        for name, value in (("train_sources", train_sources), ("val_sources", val_sources)):
            if not value:
                raise ConfigError(f"data.{name} is empty; list CSV / JSONL files or shard patterns (data/README.md)")
        self.sources = {
            "train": list(train_sources),
            "val": list(val_sources),
            "test": list(test_sources or val_sources),
        }
        self.block_size = block_size
        self.shuffle_within_shard, self.skip_bad_shards = shuffle_within_shard, skip_bad_shards
        self._records: dict[str, tuple[SplitRecords, list[str], list[int]]] = {}
        self._reported_left_out = False

    # --- sources ---------------------------------------------------------------------------------------------------
    def _path(self, spec: str) -> Path:
        return self.root / spec  # an absolute spec stays absolute

    def _table(self, spec: str) -> _Source:
        records = read_pairs_table(self._path(spec))
        images = ImageFiles([r.image for r in records], self.skip_corrupt_images)
        images.check_exist(spec)
        n = len(records)
        names = [f"{spec}[{s}:{min(s + self.block_size, n)}]" for s in range(0, n, self.block_size)]
        sizes = [min(self.block_size, n - s) for s in range(0, n, self.block_size)]
        return _Source(images, [list(r.captions) for r in records], names, sizes)

    def _shards(self, spec: str) -> _Source:
        paths = expand_braces(str(self._path(spec)))
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise ConfigError(
                f"{len(missing)} of {len(paths)} shards of {spec} are missing, the first is {missing[0]}; "
                "check the pattern (e.g. {000000..000099}.tar) and the data root"
            )
        samples, names, sizes, bad, incomplete = [], [], [], [], 0
        for path in paths:
            try:
                found, skipped = index_shard(path)
            except BadShardError as err:
                if not self.skip_bad_shards:
                    raise BadShardError(
                        f"{err}; rewrite it (python -m lit_vit shards) or set data.skip_bad_shards: true to skip it"
                    ) from err
                bad.append(str(err))
                continue
            incomplete += skipped
            if found:
                samples += found
                names.append(path)
                sizes.append(len(found))
        if bad:
            rank_zero_warn(f"skipping {len(bad)} of {len(paths)} shards of {spec} that cannot be read: {bad[0]}")
        if incomplete:
            rank_zero_warn(
                f"{incomplete} samples of {spec} have an image without a caption or a caption without an image "
                "and are skipped"
            )
        if not samples:
            raise ConfigError(f"the shards of {spec} hold no image-text pairs; check them with tar -tf")
        return _Source(
            ShardImages(samples, self.skip_corrupt_images), [list(s.captions) for s in samples], names, sizes
        )

    def _split(self, split: str) -> tuple[SplitRecords, list[str], list[int]]:
        if split not in self._records:
            sources = []
            for spec in self.sources[split]:
                kind = Path(spec).suffix.lower()
                if kind == ".tar":
                    sources.append(self._shards(spec))
                elif kind in (".csv", ".jsonl", ".json"):
                    sources.append(self._table(spec))
                else:
                    raise ConfigError(
                        f"data.{split}_sources: {spec} is not a .csv, .jsonl or .tar shard pattern; see data/README.md"
                    )
            captions = [c for s in sources for c in s.captions]
            names = [n for s in sources for n in s.unit_names]
            pairs, at = [], 0  # pairs per unit: every caption of its images
            for s in sources:
                for n in s.unit_images:
                    pairs.append(sum(len(c) for c in captions[at : at + n]))
                    at += n
            records = SplitRecords(ConcatImages([s.images for s in sources]), captions=captions)
            self._records[split] = (records, names, pairs)
        return self._records[split]

    def records(self, split: str) -> SplitRecords:
        return self._split(split)[0]

    # --- training order ---------------------------------------------------------------------------------------------
    def train_sampler(self, dataset: Dataset) -> ShardSampler:
        _, names, pairs = self._split("train")
        return ShardSampler(
            dataset, pairs, self.seed, self.batch_size, self.num_workers, self.shuffle_within_shard, names
        )

    def train_dataloader(self) -> DataLoader:
        self._report_truncation()
        dataset = self.datasets["train"]
        sampler = self.train_sampler(dataset)
        if sampler.left_out and not self._reported_left_out:
            self._reported_left_out = True
            rank_zero_warn(
                f"{sampler.left_out} of {len(dataset)} training pairs are left out of every epoch (a different part "
                f"each epoch) so that each of {sampler.slots} (rank, worker) slots reads {sampler.batches_per_slot} "
                "full batches"
            )
        if self._resume is not None:
            sampler.set_epoch(self._resume["epoch"])
            at = ", ".join(f"worker {w}: {u} +{o}" for w, u, o in sampler.position(self._resume["batches_done"]))
            rank_zero_info(f"resume: epoch {self._resume['epoch']} continues at {at}")
        return self.train_loader(dataset, sampler=sampler, **self._loader_kwargs())

    # --- resume -----------------------------------------------------------------------------------------------------
    def _layout(self) -> dict[str, int]:
        trainer = self.trainer
        return {"world_size": trainer.world_size if trainer else 1, "num_workers": self.num_workers}

    def state_dict(self) -> dict:
        state = super().state_dict()
        return {**state, **self._layout()} if state else state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self._resume is None:  # at an epoch boundary any layout continues the same sequence of epochs
            return
        saved = {k: state_dict.get(k) for k in ("world_size", "num_workers")}
        if saved != self._layout():
            raise ConfigError(
                f"the checkpoint stopped mid-epoch with {saved['world_size']} process(es) x {saved['num_workers']} "
                f"data workers, this run has {self._layout()['world_size']} x {self.num_workers}; the shard order "
                "depends on both: resume with the same devices and data.num_workers (or from an epoch-end checkpoint)"
            )
