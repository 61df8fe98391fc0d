"""Mid-epoch resume of image-text training (ViLT on the embedded scenes): the image-text DataModules share the
classification one's mechanism (lit_vit.data.sampling.ResumableDataModule), so a run killed mid-epoch and resumed
from last.ckpt trains on exactly the batches, and ends with exactly the weights, of a run that was never stopped."""

import lightning as L
import pytest
import torch
from _cli_callbacks import CrashAtStep
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lit_vit.data import SceneDataModule
from lit_vit.models import ViLT
from lit_vit.modules import ViltVQA

# no dropout and every patch kept (max_image_len -1: no random patch sampling), so training draws no random numbers
# and the weights of two runs that see the same batches are equal bit for bit
TINY = dict(max_text_len=16, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
            drop_rate=0.0, max_image_len=-1)  # fmt: skip
BATCHES_PER_EPOCH = 6  # 12 scenes x 4 questions / batch size 8


pytestmark = pytest.mark.usefixtures("one_thread")


class RecordBatches(Callback):
    """(global step, epoch, sample indices, fingerprint of the augmented images) of every training batch."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        self.batches.append(
            {
                "step": trainer.global_step,
                "epoch": trainer.current_epoch,
                "index": batch["index"].tolist(),
                "image": round(float(batch["image"].sum()), 3),
            }
        )


def fit(run_dir, *callbacks: Callback, ckpt_path: str | None = None, every: int = 4) -> ViltVQA:
    """Two epochs of VQA fine-tuning (no random numbers drawn: no dropout, no patch sampling, no sampling in the
    loss) with a checkpoint every `every` steps; affine augmentation, so the per-sample augmentation seeds are part of
    what must repeat."""
    L.seed_everything(0)
    dm = SceneDataModule(task="vqa", num_train=12, num_val=4, batch_size=8, augment="affine")
    module = ViltVQA(ViLT(**TINY), lr=1e-3)
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=2,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", every_n_train_steps=every, save_last=True),
                   *callbacks],
    )  # fmt: skip
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """The batches and final weights of the run that is never stopped."""
    record = RecordBatches()
    module = fit(tmp_path_factory.mktemp("ref"), record)
    assert [b["step"] for b in record.batches] == list(range(2 * BATCHES_PER_EPOCH))
    return record.batches, module.state_dict()


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_vilt_run_killed_mid_epoch_resumes_exactly_where_it_stopped(tmp_path, reference):
    ref_batches, ref_weights = reference
    run_record = RecordBatches()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "run", run_record, CrashAtStep(9))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    interrupted = torch.load(last, map_location="cpu", weights_only=False)  # our own checkpoint
    assert (interrupted["epoch"], interrupted["global_step"]) == (1, 8)  # the periodic checkpoint, mid-epoch 1
    # the position inside the epoch travels as the DataModule's state: 2 of the epoch's 6 batches were trained on
    assert interrupted["SceneDataModule"] == {"epoch": 1, "batches_done": 2, "seed": 0}
    crashed = len(run_record.batches)  # 9 steps before the crash + the batch it crashed on

    resumed = fit(tmp_path / "run", run_record, ckpt_path=str(last))
    after = run_record.batches[crashed:]
    assert [b["step"] for b in after] == [8, 9, 10, 11]
    assert after == ref_batches[8:]  # the same samples with the same augmentation, in the same order
    assert same_weights(resumed.state_dict(), ref_weights)  # and the same weights at the end


def test_a_vilt_run_resumed_from_an_epoch_end_starts_the_next_epoch_whole(tmp_path, reference):
    ref_batches, ref_weights = reference
    record = RecordBatches()
    with pytest.raises(RuntimeError, match="simulated crash"):
        fit(tmp_path / "run", record, CrashAtStep(BATCHES_PER_EPOCH + 1), every=3)
    # the last periodic checkpoint is the one of step 6, the last batch of epoch 0: the epoch is complete
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)
    assert state["global_step"] == BATCHES_PER_EPOCH and state["SceneDataModule"]["batches_done"] == 0
    crashed = len(record.batches)
    resumed = fit(tmp_path / "run", record, ckpt_path=str(last), every=3)
    after = record.batches[crashed:]
    assert [b["step"] for b in after] == list(range(BATCHES_PER_EPOCH, 2 * BATCHES_PER_EPOCH))
    assert after == ref_batches[BATCHES_PER_EPOCH:]
    assert same_weights(resumed.state_dict(), ref_weights)
