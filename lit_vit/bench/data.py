"""Timing a DataModule's training loader, optionally over a generated tree of JPEGs."""

import time
from pathlib import Path

from jsonargparse import ArgumentParser, Namespace

from lit_vit.bench.config import instantiate, set_init_arg
from lit_vit.errors import ConfigError


def write_jpeg_tree(root: Path, num_images: int, size: int, num_classes: int = 4) -> Path:
    """An ImageFolder tree (train/<class>/*.jpg, val/<class>/*.jpg) of smooth random colour images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", num_images), ("val", max(num_classes, num_images // 10))):
        for i in range(n):
            folder = root / split / f"class_{i % num_classes}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
            img.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bench_data(parser: ArgumentParser, cfg: Namespace) -> dict:
    """Images/s of the training loader (decode + augment + collate) per worker count."""
    results = {}
    for workers in cfg.workers:
        run = cfg.clone()
        set_init_arg(run.data, "num_workers", workers, "--workers")
        if "persistent_workers" in run.data.init_args:  # the workers end with each count's loader
            run.data.init_args.persistent_workers = False
        if cfg.data_batch_size is not None:
            set_init_arg(run.data, "batch_size", cfg.data_batch_size, "--data-batch-size")
        dm = instantiate(parser, run, "data")
        dm.prepare_data()
        dm.setup("fit")
        loader = dm.train_dataloader()
        it = iter(loader)
        t0 = time.perf_counter()
        next(it)
        first = time.perf_counter() - t0
        images, batches, t0 = 0, 0, time.perf_counter()
        for batch in it:
            images += len(batch[0])
            batches += 1
            if batches >= cfg.data_batches:
                break
        elapsed = time.perf_counter() - t0
        if batches == 0:
            raise ConfigError(
                f"the training loader of {cfg.data.class_path} gave only one batch; use a smaller --data-batch-size"
            )
        results[str(workers)] = {
            "images_per_s": images / elapsed,
            "batches": batches,
            "batch_size": dm.batch_size,
            "first_batch_s": first,
            "img_size": list(dm.img_size),
        }
        del it, loader
    return results
