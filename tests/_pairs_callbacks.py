"""A callback that DDP tests of PairsDataModule inject through --trainer.callbacks (pytest puts tests/ on sys.path)."""

import json

import lightning as L
from lightning.pytorch.callbacks import Callback


class RecordPairs(Callback):
    """Appends [rank, epoch, global step, pair indices] of every training batch to `<folder>/rank<r>.jsonl`."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        row = [trainer.global_rank, trainer.current_epoch, trainer.global_step, batch["index"].tolist()]
        with open(f"{self.folder}/rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
