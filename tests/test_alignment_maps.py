"""Word-patch alignment maps (lit_vit.callbacks.alignment, the ViLT paper's Figure 4): each word's transport-plan mass
over its image's own patch grid, as WPA's plan has it, and the PNGs the callback writes at the end of a ViLT fit."""

import lightning as L
import numpy as np
import pytest
import torch

from lit_vit.callbacks.alignment import ViltAlignmentMaps, alignment_maps, caption_alignment
from lit_vit.data import SceneDataModule
from lit_vit.errors import ConfigError
from lit_vit.models import ViLT
from lit_vit.models.vilt import wpa_plan
from lit_vit.modules import ViltPretraining

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(max_text_len=16, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
            drop_rate=0.0, max_image_len=-1)  # fmt: skip


@pytest.fixture(scope="module")
def scenes() -> SceneDataModule:
    dm = SceneDataModule(num_train=16, num_val=6, batch_size=6)
    dm.setup("fit")
    return dm


def val_batch(dm: SceneDataModule, n: int) -> dict:
    return dm.collate()([dm.datasets["val"][i] for i in range(n)])


def test_each_words_plan_mass_is_its_share_of_the_words_and_lies_on_its_images_own_grid(scenes):
    torch.manual_seed(0)
    model = ViLT(**TINY)
    batch = val_batch(scenes, 6)
    maps = alignment_maps(model, batch, scenes.tokenizer)
    sizes = set()
    for b, m in enumerate(maps):
        caption = scenes.datasets["val"][b]["text"]
        assert m.words == caption.split()  # every scene word is one token of the trained vocabulary
        # IPOT's last step fixes the text marginal: every word carries 1 / (number of words) of the plan
        np.testing.assert_allclose(m.plan.sum(axis=(1, 2)), 1 / len(m.words), rtol=1e-5)
        assert m.plan.min() >= 0 and m.plan.max() > 1 / len(m.words) / m.plan[0].size  # not uniform
        # the grid is the image's own (unpadded) patch grid, and the image is cropped to it
        h, w = (int(s) for s in batch["pixel_mask"][b].nonzero().max(0).values + 1)
        assert m.plan.shape[1:] == m.attention.shape[1:] == (h // 8, w // 8)
        assert m.image.shape == (3, h, w)
        sizes.add((h, w))
        # attention from a word to the patches: part of a softmax row over text, image [CLS] and patches
        assert np.all(m.attention.sum(axis=(1, 2)) > 0) and np.all(m.attention.sum(axis=(1, 2)) < 1)
    assert len(sizes) > 1  # scenes of different sizes in one padded batch
    # the same numbers as WPA's own plan (the loss's computation), rearranged onto the grid
    model.eval()
    with torch.no_grad():
        out = model(batch["text_ids"], batch["text_mask"], batch["image"], batch["pixel_mask"])
        _, plan, _, _ = wpa_plan(out)
    first_word = 1  # text token 1 is the first word ([CLS] is token 0)
    grid = plan[0, 1:, first_word].reshape(*(s // 8 for s in batch["image"].shape[-2:]))
    rows, cols = maps[0].plan.shape[1:]
    np.testing.assert_allclose(maps[0].plan[0], grid[:rows, :cols].double().numpy(), rtol=1e-6)


def test_caption_alignment_of_one_image_and_caption_equals_the_batch_computation(scenes):
    torch.manual_seed(0)
    model = ViLT(**TINY)
    item = scenes.datasets["val"][2]
    single = caption_alignment(model, scenes.tokenizer, item["image"], item["text"])
    batched = alignment_maps(model, val_batch(scenes, 3), scenes.tokenizer)[2]
    assert single.words == batched.words
    np.testing.assert_allclose(single.plan, batched.plan, atol=1e-6)
    np.testing.assert_allclose(single.attention, batched.attention, atol=1e-5)


def test_the_callback_writes_one_png_per_validation_pair_and_the_numbers_at_the_end_of_a_vilt_fit(tmp_path):
    L.seed_everything(0)
    dm = SceneDataModule(num_train=16, num_val=4, batch_size=8)
    trainer = L.Trainer(
        default_root_dir=tmp_path, max_epochs=1, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ViltAlignmentMaps(num_pairs=2)],
    )  # fmt: skip
    trainer.fit(ViltPretraining(ViLT(**TINY), lr=1e-3), dm)
    out = tmp_path / "artifacts"
    pngs = sorted(p.name for p in out.glob("alignment_*.png"))
    assert pngs == ["alignment_0.png", "alignment_1.png"]
    assert all((out / p).stat().st_size > 10_000 for p in pngs)  # a 2 x 11 grid of maps, not an empty figure
    numbers = np.load(out / "alignment.npz")
    assert list(numbers["words_1"]) == dm.datasets["val"][1]["text"].split()
    np.testing.assert_allclose(numbers["plan_1"].sum(), 1.0, rtol=1e-5)


def test_num_pairs_must_be_positive():
    with pytest.raises(ConfigError, match="num_pairs must be a positive integer, got 0"):
        ViltAlignmentMaps(num_pairs=0)
