"""ViLT NLVR2: the official file layout, the embedded pair task, the pair head and its third modality-type row (and
a 2-row checkpoint into it), parity with transformers' ViltForImagesAndTextClassification, the module."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from lit_vit.data import NLVR2DataModule, SceneDataModule, SceneNLVR2DataModule
from lit_vit.data.image_text.nlvr2 import ScenePairs
from lit_vit.data.image_text.scenes import COLORS
from lit_vit.errors import ConfigError
from lit_vit.models import ViLT
from lit_vit.models.weights import load_pretrained
from lit_vit.modules import ViltNLVR2, ViltVQA

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(vocab_size=50, max_text_len=16, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4)


# --- the official layout -------------------------------------------------------------------------------------------
def write_nlvr2(root, bad_label: bool = False, drop_image: bool = False) -> dict[str, list[dict]]:
    """A tiny NLVR2 release: nlvr2/data/{train,dev,test1}.json (JSON lines) and the PNGs where the release puts them:
    images/train/<directory>/<pair>-img{0,1}.png, dev/ and test1/ flat (<pair>: the identifier without "-N")."""
    entries = {
        "train": [
            {"identifier": "train-10108-0-0", "sentence": "One dog is on the left.", "label": "True", "directory": 7},
            {"identifier": "train-10108-0-1", "sentence": "There are three dogs.", "label": "False", "directory": 7},
            {"identifier": "train-2-1-0", "sentence": "Both images show birds.", "label": "False", "directory": 12},
        ],
        "dev": [{"identifier": "dev-850-0-0", "sentence": "A bird flies.", "label": "True"}],
        "test1": [{"identifier": "test1-3-2-1", "sentence": "Two cats.", "label": "Maybe" if bad_label else "False"}],
    }
    (root / "nlvr2" / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, rows in entries.items():
        with open(root / "nlvr2" / "data" / f"{split}.json", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        for r in rows:
            pair = r["identifier"].rsplit("-", 1)[0]
            folder = root / "images" / "train" / str(r["directory"]) if split == "train" else root / split
            folder.mkdir(parents=True, exist_ok=True)
            for side, (h, w) in enumerate([(40, 64), (64, 48)]):
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{pair}-img{side}.png")
    if drop_image:
        (root / "dev" / "dev-850-0-img1.png").unlink()
    return entries


def test_nlvr2_reads_the_official_layout(tmp_path):
    write_nlvr2(tmp_path)
    dm = NLVR2DataModule(root=str(tmp_path), image_size=32, patch_size=8, batch_size=3, num_workers=0)
    train = dm.pair_records("train")
    assert [(e.text, e.label, e.identifier) for e in train.examples] == [
        ("One dog is on the left.", 1, "train-10108-0-0"),
        ("There are three dogs.", 0, "train-10108-0-1"),
        ("Both images show birds.", 0, "train-2-1-0"),
    ]
    # the two sentences of train-10108-0 share its image pair: 2 pairs, 4 files, left = img0, right = img1
    assert len(train.images) == 4 and (train.examples[0].left, train.examples[0].right) == (0, 1)
    assert train.images.paths[:2] == [
        str(tmp_path / "images/train/7/train-10108-0-img0.png"),
        str(tmp_path / "images/train/7/train-10108-0-img1.png"),
    ]
    assert dm.pair_records("val").images.paths[1] == str(tmp_path / "dev/dev-850-0-img1.png")
    assert dm.pair_records("test").images.paths[0] == str(tmp_path / "test1/test1-3-2-img0.png")
    dm.setup("fit")
    batch = next(iter(dm.train_loader(dm.datasets["train"], collate_fn=dm.collate())))
    # each side padded on its own: 40x64 -> 32x48 (left), 64x48 -> 40x32 (right), both with their pixel masks
    assert batch["image"].shape == (3, 3, 32, 48) and batch["image_right"].shape == (3, 3, 40, 32)
    assert batch["pixel_mask"].all() and batch["pixel_mask_right"].all()
    assert sorted(batch["label"].tolist()) == [0, 0, 1] and batch["text_ids"].shape[0] == 3


def test_nlvr2_bad_files_are_one_line_errors(tmp_path):
    write_nlvr2(tmp_path / "a", bad_label=True, drop_image=True)
    dm = NLVR2DataModule(root=str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"test1.json line 1: label 'Maybe' is not one of True, False"):
        dm.pair_records("test")
    with pytest.raises(ConfigError, match=r"1 of 2 images named in .*dev.json are missing, the first is .*img1.png"):
        dm.pair_records("val")
    with pytest.raises(ConfigError, match=r"annotation file .*nowhere/nlvr2/data/train.json does not exist"):
        NLVR2DataModule(root=str(tmp_path / "nowhere")).pair_records("train")
    (tmp_path / "a" / "nlvr2" / "data" / "train.json").write_text('{"identifier": "train-1-0-0", "label": "True"}\n')
    with pytest.raises(ConfigError, match=r"train.json line 1 has no sentence, directory"):
        dm.pair_records("train")


# --- the embedded pair task ----------------------------------------------------------------------------------------
def clause_is_true(clause: str, scene: dict) -> bool:
    """Read a clause ("a red circle", "no red object", "a square") against a scene's layout."""
    negated, words = clause.startswith("no "), clause.split()[1:]
    present = set(zip(scene["colors"], scene["shapes"]))
    if len(words) == 2 and words[1] == "object":
        found = words[0] in scene["colors"]
    elif len(words) == 2:
        found = (words[0], words[1]) in present
    else:
        found = words[0] in scene["shapes"]
    return found != negated


def test_scene_pairs_are_balanced_and_need_both_images():
    pairs = ScenePairs(200, seed=11)
    wrong_side = []
    for k in range(pairs.num):
        ex = pairs.example(k)
        left, right = ex.text.removeprefix("left there is ").split(" right there is ")
        layouts = pairs.scenes.layout(ex.left), pairs.scenes.layout(ex.right)
        truth = [clause_is_true(left, layouts[0]), clause_is_true(right, layouts[1])]
        assert ex.label == int(all(truth)) == int(k % 2 == 0), ex
        if not ex.label:
            assert truth.count(False) == 1  # exactly one false clause: neither image alone decides
            wrong_side.append(truth.index(False))
    assert 0.35 < np.mean(wrong_side) < 0.65  # the false clause is the left or the right one at random
    words = {w for k in range(pairs.num) for w in pairs.example(k).text.split()}
    assert {"no", "object", "left", "right"} <= words and set(COLORS) <= words
    # every word is in the embedded pre-training texts (the pre-trained vocabulary), but "no"
    scenes = SceneDataModule(num_train=200)
    vocab = {w.strip("?") for t in scenes.vocab_texts() for w in t.split()}
    assert words - vocab == {"no"}


def test_scene_nlvr2_splits_are_fixed_and_distinct():
    a, b = SceneNLVR2DataModule(num_val=20), SceneNLVR2DataModule(num_val=20, seed=5)
    assert a.pair_records("val").examples == b.pair_records("val").examples  # `seed` orders training, not scenes
    assert a.pair_records("val").examples != a.pair_records("test").examples[:20]
    with pytest.raises(ConfigError, match="num_train must be 1 or more, got 0"):
        SceneNLVR2DataModule(num_train=0)


# --- the model -----------------------------------------------------------------------------------------------------
def test_pair_head_shapes_and_a_third_modality_row_from_the_image_row():
    torch.manual_seed(0)
    model = ViLT(**TINY, drop_rate=0.0, nlvr2_head=True).eval()
    table = model.modality_embed.weight
    assert table.shape == (3, 32) and torch.equal(table[2], table[1]) and not torch.equal(table[0], table[1])
    assert [tuple(p.shape) for p in model.nlvr2_head.parameters()] == [(64, 64), (64,), (64,), (64,), (2, 64), (2,)]
    ids, image = torch.tensor([[2, 7, 9, 3], [2, 5, 3, 0]]), torch.randn(2, 3, 32, 24)
    with torch.no_grad():
        model.modality_embed.weight[2] += torch.randn(32)  # the right image's type, once trained, differs
        left, right = model(ids, (ids > 0).long(), image), model(ids, (ids > 0).long(), image, image_type=2)
        logits = model.nlvr2_logits(left, right)
    assert logits.shape == (2, 2)
    assert not torch.allclose(left["pooled"], right["pooled"])  # the same image, read as left and as right


def test_a_two_row_checkpoint_into_the_three_row_model_is_extended_and_reported():
    torch.manual_seed(0)
    pretrained = ViLT(**TINY).state_dict()  # a pre-training checkpoint: text and image types only
    assert pretrained["modality_embed.weight"].shape == (2, 32)
    model = ViLT(**TINY, nlvr2_head=True)
    report = load_pretrained(model, pretrained)
    table = model.modality_embed.weight
    assert torch.equal(table[:2], pretrained["modality_embed.weight"])
    assert torch.equal(table[2], pretrained["modality_embed.weight"][1])  # the official init of the new row
    assert report.extended == ["modality_embed.weight: 2 -> 3 rows (row 2, the second image's, copied from row 1, the "
                               "image's)"]  # fmt: skip
    assert "extended: modality_embed.weight: 2 -> 3 rows" in report.summary()
    assert sorted({k.split(".")[0] for k in report.missing}) == ["nlvr2_head"] and report.unexpected == []
    # a 3-row (NLVR2) checkpoint into a model without the third row is a shape error, not a silent cut
    with pytest.raises(ConfigError, match="modality_embed.weight"):
        load_pretrained(ViLT(**TINY), model.state_dict())
    # an NLVR2 checkpoint round-trips through the original layout (nlvr2_classifier.*) with its head
    from lit_vit.models.weights.vilt import to_original_vilt

    original = to_original_vilt(model.state_dict())
    assert "nlvr2_classifier.0.weight" in original and original["token_type_embeddings.weight"].shape == (3, 32)
    again = ViLT(**TINY, nlvr2_head=True)
    report = load_pretrained(again, original)
    assert report.layout == "original" and report.missing == [] and report.extended == []
    assert torch.equal(again.nlvr2_head[0].weight, model.nlvr2_head[0].weight)


transformers = pytest.importorskip("transformers")


def test_parity_with_transformers_images_and_text_classification():
    torch.manual_seed(3)
    cfg = transformers.ViltConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=16, image_size=32, patch_size=8, max_image_length=-1, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, num_images=2, modality_type_vocab_size=3, num_labels=2,
    )  # fmt: skip
    hf = transformers.ViltForImagesAndTextClassification(cfg).eval()
    ours = ViLT(**TINY, drop_rate=0.0, norm_eps=1e-12, nlvr2_head=True).eval()
    report = load_pretrained(ours, hf.state_dict())  # HF calls the pair head `classifier`, as its VQA head
    assert sorted({k.split(".")[0] for k in report.missing}) == ["itm_head", "mlm_head"]
    ids = torch.tensor([[2, 7, 9, 3, 0], [2, 5, 3, 0, 0]])
    images, mask = torch.randn(2, 2, 3, 32, 32), torch.ones(2, 2, 32, 32, dtype=torch.long)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=(ids > 0).long(), pixel_values=images, pixel_mask=mask).logits
        left = ours(ids, (ids > 0).long(), images[:, 0], mask[:, 0])
        right = ours(ids, (ids > 0).long(), images[:, 1], mask[:, 1], image_type=2)
        assert torch.allclose(ours.nlvr2_logits(left, right), ref, atol=1e-5)


# --- the module ----------------------------------------------------------------------------------------------------
class _Trainer:
    def __init__(self, dm):
        self.datamodule, self.ckpt_path = dm, None


def attach(module, dm, stage: str = "fit"):
    module._trainer = _Trainer(dm)
    try:
        module.setup(stage)
    finally:
        module._trainer = None
    return module


def test_the_nlvr2_module_refuses_other_data_and_predict():
    pairs = SceneNLVR2DataModule(num_train=8, num_val=4, batch_size=4)
    pairs.setup("fit")
    with pytest.raises(ConfigError, match="ViltVQA needs captions or vqa data, and SceneNLVR2DataModule holds nlvr2"):
        attach(ViltVQA(ViLT(**TINY)), pairs)
    with pytest.raises(ConfigError, match="ViltNLVR2 needs nlvr2 data, and SceneDataModule holds captions"):
        attach(ViltNLVR2(ViLT(**TINY)), SceneDataModule(num_train=8, num_val=4))
    with pytest.raises(ConfigError, match="predict is not available for ViltNLVR2"):
        attach(ViltNLVR2(ViLT(**TINY)), pairs, "predict")
    # random weights are never evaluated: test without a checkpoint needs pretrained weights with a trained head
    module = ViltNLVR2(ViLT(**TINY), pretrained="pre.ckpt")
    with pytest.raises(ConfigError, match="test needs trained weights"):
        module.check_zero_shot("test", None)
    with pytest.raises(ConfigError, match=r"evaluates pre.ckpt as it is, and it has no trained nlvr2_head"):
        module.check_zero_shot("test", ["nlvr2_head"])


def test_the_pair_task_is_learned_on_a_fixed_batch_and_the_right_image_type_trains():
    torch.manual_seed(0)
    dm = SceneNLVR2DataModule(num_train=32, num_val=4, batch_size=32)
    dm.setup("fit")
    module = attach(ViltNLVR2(ViLT(**TINY | {"vocab_size": 200, "drop_rate": 0.0})), dm)
    module.log = lambda *a, **k: None
    batch = next(iter(dm.train_dataloader()))
    assert batch["label"].float().mean() == 0.5  # 16 true, 16 false statements
    opt = torch.optim.AdamW(module.parameters(), lr=2e-3)
    for _ in range(60):
        loss = module.training_step(batch, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    module.eval()
    with torch.no_grad():
        accuracy = (module.pair_logits(batch).argmax(1) == batch["label"]).float().mean().item()
    assert accuracy >= 0.9 and loss.item() < 0.3, (accuracy, loss.item())
    table = module.model.modality_embed.weight
    assert not torch.allclose(table[2], table[1], atol=1e-3)  # the right image's row learned its own value
