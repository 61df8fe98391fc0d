"""Image-text data for ViLT: resize rule, padding and pixel masks, tokenizer, whole-word masking, the embedded
scenes, COCO / Karpathy / VQAv2 loaders on small files in the real formats, and every bad input."""

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from lit_vit.data.image_text import (
    CocoCaptionsDataModule,
    KarpathyDataModule,
    SceneDataModule,
    Scenes,
    VQAv2DataModule,
    vilt_resize_shape,
    vqa_score,
)
from lit_vit.data.tokenizer import SPECIAL_TOKENS, TextTokenizer, whole_word_mask
from lit_vit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_vilt_resize_rule():
    assert vilt_resize_shape(480, 640, 384, 640, 32) == (384, 512)  # shorter side to 384
    assert vilt_resize_shape(300, 1200, 384, 640, 32) == (160, 640)  # longer side capped at 640, floored to 32
    assert vilt_resize_shape(640, 427, 384, 640, 32) == (576, 384)
    assert vilt_resize_shape(64, 96, 32, 53, 8) == (32, 48)


def test_batch_pads_images_of_different_sizes_with_pixel_masks():
    dm = SceneDataModule(num_train=16, num_val=8, batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    heights = batch["pixel_mask"][:, :, 0].sum(1)
    widths = batch["pixel_mask"][:, 0, :].sum(1)
    assert len({(h, w) for h, w in zip(heights.tolist(), widths.tolist())}) > 1  # several sizes in one batch
    assert batch["image"].shape[2:] == (heights.max(), widths.max())
    assert min(heights.min(), widths.min()) == 32  # shorter side 32
    assert (heights % 8 == 0).all() and (widths % 8 == 0).all() and widths.max() <= 53
    for b in range(16):  # the padding is zero and outside the mask
        h, w = heights[b], widths[b]
        assert batch["image"][b, :, h:, :].abs().sum() == 0 and batch["image"][b, :, :, w:].abs().sum() == 0
        assert batch["pixel_mask"][b, :h, :w].all()
    assert batch["text_ids"][:, 0].eq(dm.tokenizer.cls_id).all()


def test_scenes_are_deterministic_and_captions_name_what_is_drawn():
    scenes = Scenes(20, seed=5)
    assert np.array_equal(scenes.load(3), Scenes(20, seed=5).load(3))
    assert not np.array_equal(scenes.load(3), Scenes(20, seed=6).load(3))
    for i in range(20):
        s = scenes.layout(i)
        image = scenes.load(i)
        for color, shape in zip(s["colors"], s["shapes"]):
            assert any(f"{color} {shape}" in c for c in scenes.captions(i))
        x0, y0, x1, y1 = s["boxes"][0]
        centre = image[(y0 + y1) // 2, (x0 + x1) // 2]
        assert tuple(centre) == {"red": (220, 50, 40), "green": (40, 170, 60), "blue": (50, 90, 230),
                                 "yellow": (235, 215, 40), "purple": (150, 60, 200)}[s["colors"][0]]  # fmt: skip
        color_of = dict(zip(s["shapes"], s["colors"]))
        (q_color, a_color), (q_shape, a_shape) = scenes.questions(i)[:2]
        assert a_color == color_of[q_color.removeprefix("what color is the ").removesuffix("?")]
        assert q_shape == f"what shape is the {a_color} object?" and color_of[a_shape] == a_color


def bert_vocab(tmp_path):
    words = ["the", "a", "red", "circle", "left", "of", "to", "play", "##ing", "##s", "cat", ",", ".", "?"]
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(5)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return path


def test_tokenizer_from_bert_vocab_matches_bert_ids(tmp_path):
    path = bert_vocab(tmp_path)
    tok = TextTokenizer.from_file(path, max_len=12)
    batch = tok(["The red circle, playing cats.", "a cat"])
    transformers = pytest.importorskip("transformers")
    ref = transformers.BertTokenizer(str(path), do_lower_case=True)
    expected = ref("The red circle, playing cats.")["input_ids"]
    assert batch.ids[0, : len(expected)].tolist() == expected
    assert batch.mask[1].tolist() == [1, 1, 1, 1] + [0] * (batch.ids.shape[1] - 4)
    # word ids: "playing" = play ##ing is one word; specials and padding are -1
    words = batch.word_ids[0].tolist()
    ids = batch.ids[0].tolist()
    play = ids.index(tok.vocab.index("play"))
    assert words[play] == words[play + 1] and words[0] == -1


def test_tokenizer_trained_on_captions_round_trips(tmp_path):
    texts = [f"a {c} {s} to the left of a {c2} square" for c in ("red", "blue") for s in ("circle", "triangle")
             for c2 in ("green", "purple")]  # fmt: skip
    tok = TextTokenizer.train(texts, vocab_size=100, max_len=16)
    assert tok.vocab[: len(SPECIAL_TOKENS)] == list(SPECIAL_TOKENS)
    assert tok.decode(tok([texts[0]]).ids[0].tolist()) == texts[0]
    again = TextTokenizer.from_file(tok.save(tmp_path / "v.txt"), max_len=16)
    assert torch.equal(again(texts).ids, tok(texts).ids)
    assert TextTokenizer.train(texts, 100, 16).vocab == tok.vocab  # deterministic


def test_whole_word_masking_masks_all_pieces_of_a_word():
    ids = torch.tensor([[2, 10, 11, 12, 13, 3, 0]])
    word_ids = torch.tensor([[-1, 0, 0, 1, 2, 2, -1]])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        masked, labels = whole_word_mask(ids, word_ids, mask_id=4, vocab_size=20, prob=0.5, generator=g)
        target = labels != -100
        assert target.any()  # every text gets at least one word
        assert target[0, 1] == target[0, 2] and target[0, 4] == target[0, 5]
        assert not target[0, [0, 5, 6]].any() or target[0, 5] == target[0, 4]
        assert not target[0, 0] and not target[0, 6]
        assert torch.equal(labels[target], ids[target])


def write_jpeg(path, size=(40, 30), color=(200, 10, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


def coco_root(tmp_path, captions=None):
    root = tmp_path / "coco"
    for part, ids in (("train", (9, 25, 30)), ("val", (42, 73))):
        images = [{"id": i, "file_name": f"{i:012d}.jpg", "height": 30, "width": 40} for i in ids]
        anns = [{"id": 100 * i + k, "image_id": i, "caption": f"A photo number {i} variant {k}."} for i in ids
                for k in range(2)]  # fmt: skip
        if part == "train" and captions is not None:
            anns = captions
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"captions_{part}2017.json").write_text(
            json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns})
        )
        for i in ids:
            write_jpeg(root / f"{part}2017" / f"{i:012d}.jpg")
    return root


def test_coco_captions_loader(tmp_path):
    dm = CocoCaptionsDataModule(root=str(coco_root(tmp_path)), image_size=32, patch_size=8, batch_size=2,
                                num_workers=0, vocab_size=60)  # fmt: skip
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 6 and len(dm.datasets["val"]) == 4
    rec = dm.records("train")
    assert rec.images.paths[0].endswith("train2017/000000000009.jpg") and rec.captions[1] == [
        "A photo number 25 variant 0.",
        "A photo number 25 variant 1.",
    ]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 32, 40)  # 30x40 -> shorter 32, longer 42.7 floored to 40
    grid = dm.retrieval_dataset("val")
    assert len(grid) == 2 * 4 and grid.text_image.tolist() == [0, 0, 1, 1]


def karpathy_root(tmp_path, name="flickr30k"):
    root = tmp_path / name
    entries = []
    for k, split in enumerate(["train", "restval", "val", "test", "test"]):
        entry = {"filename": f"{k}.jpg", "imgid": k, "split": split,
                 "sentences": [{"raw": f"Image {k} caption {j}.", "tokens": ["image", str(k)], "imgid": k,
                                "sentid": 5 * k + j} for j in range(2)]}  # fmt: skip
        if name == "coco":
            entry["filepath"] = "val2014"
            write_jpeg(root / "val2014" / f"{k}.jpg", size=(30, 40))
        else:
            write_jpeg(root / "flickr30k-images" / f"{k}.jpg", size=(30, 40))
        entries.append(entry)
    (root / f"dataset_{name}.json").write_text(json.dumps({"images": entries, "dataset": name}))
    return root


@pytest.mark.parametrize("name", ["flickr30k", "coco"])
def test_karpathy_loader_trains_on_train_and_restval(tmp_path, name):
    root = karpathy_root(tmp_path, name)
    dm = KarpathyDataModule(root=str(root), split_file=f"dataset_{name}.json", image_size=32, patch_size=8,
                            num_workers=0, batch_size=4, vocab_size=60)  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    assert len(dm.datasets["train"]) == 4  # 2 images (train + restval) x 2 captions
    assert len(dm.datasets["val"]) == 2 and len(dm.datasets["test"]) == 4
    expected_dir = "val2014" if name == "coco" else "flickr30k-images"
    assert dm.records("train").images.paths == [str(root / expected_dir / "0.jpg"), str(root / expected_dir / "1.jpg")]
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 40, 32)  # portrait 40x30 -> 42.7x32, floored to the patch: 40x32
    assert batch["text_ids"].shape[0] == 4


def vqa_root(tmp_path):
    root = tmp_path / "vqav2"
    for part, image_ids in (("train", (1, 2)), ("val", (3,))):
        questions, annotations = [], []
        for img in image_ids:
            for k, (q, answers) in enumerate(
                [("What color is the car?", ["red"] * 6 + ["Red."] + ["blue"] * 2 + ["green"]),
                 ("How many cats?", ["2"] * 3 + ["two"] + ["3"] * 6)]
            ):  # fmt: skip
                qid = img * 10 + k
                questions.append({"image_id": img, "question": q, "question_id": qid})
                annotations.append({
                    "question_id": qid, "image_id": img, "question_type": "what", "answer_type": "other",
                    "multiple_choice_answer": answers[0],
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                for j, a in enumerate(answers)],
                })  # fmt: skip
            write_jpeg(root / f"{part}2014" / f"COCO_{part}2014_{img:012d}.jpg")
        (root / f"v2_OpenEnded_mscoco_{part}2014_questions.json").write_text(
            json.dumps(
                {
                    "info": {},
                    "task_type": "Open-Ended",
                    "data_type": "mscoco",
                    "data_subtype": f"{part}2014",
                    "questions": questions,
                }
            )  # fmt: skip
        )
        (root / f"v2_mscoco_{part}2014_annotations.json").write_text(
            json.dumps({"info": {}, "data_type": "mscoco", "data_subtype": f"{part}2014", "annotations": annotations})
        )
    return root


def test_vqav2_loader_builds_answers_and_soft_scores(tmp_path):
    dm = VQAv2DataModule(root=str(vqa_root(tmp_path)), min_answer_count=3, image_size=32, patch_size=8,
                         num_workers=0, batch_size=4, vocab_size=60)  # fmt: skip
    dm.setup("fit")
    # answers given >= 3 times over the training annotations (normalised: "Red." -> "red")
    assert dm.answers == ["2", "3", "blue", "red"]
    batch = next(iter(dm.train_dataloader()))
    assert batch["targets"].shape == (4, 4)
    color = batch["targets"][batch["text_ids"][:, 1] == dm.tokenizer.tokenizer.token_to_id("what")][0]
    assert color.tolist() == [0.0, 0.0, pytest.approx(0.6), 1.0]  # red 7 votes -> 1.0, blue 2 votes -> 0.6
    assert vqa_score(1) == pytest.approx(0.3) and vqa_score(3) == pytest.approx(0.9) and vqa_score(4) == 1.0
    assert len(dm.datasets["val"]) == 2


# --- bad input ---------------------------------------------------------------------------------------------------
def test_long_captions_are_truncated_and_reported_once():
    dm = SceneDataModule(num_train=32, num_val=8, batch_size=8, max_text_len=6)
    dm.setup("fit")
    with pytest.warns(UserWarning, match=r"64 of 64 training texts are longer than max_text_len=6"):
        loader = dm.train_dataloader()
    assert next(iter(loader))["text_ids"].shape[1] == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm.train_dataloader()  # reported once, not every epoch


def test_missing_images_name_the_first_and_the_count(tmp_path):
    root = coco_root(tmp_path)
    (root / "train2017" / "000000000025.jpg").unlink()
    (root / "train2017" / "000000000030.jpg").unlink()
    dm = CocoCaptionsDataModule(root=str(root), num_workers=0)
    with pytest.raises(ConfigError, match=r"2 of 3 images .* missing, the first is .*000000000025.jpg"):
        dm.setup("fit")


def test_empty_caption_is_an_error(tmp_path):
    anns = [{"id": 1, "image_id": 9, "caption": "a dog"}, {"id": 2, "image_id": 25, "caption": "  "}]
    dm = CocoCaptionsDataModule(root=str(coco_root(tmp_path, captions=anns)), num_workers=0)
    with pytest.raises(ConfigError, match="1 empty captions.*image 1"):
        dm.setup("fit")


def test_missing_vocab_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match=r"vocabulary file .*nope.txt does not exist"):
        SceneDataModule(vocab_file=str(tmp_path / "nope.txt"))


def test_corrupt_image_fails_by_default_and_is_skipped_when_opted_in(tmp_path):
    root = karpathy_root(tmp_path)
    (root / "flickr30k-images" / "1.jpg").write_bytes(b"not a jpeg")
    dm = KarpathyDataModule(root=str(root), image_size=32, patch_size=8, num_workers=0, batch_size=4, vocab_size=60)
    dm.setup("fit")
    with pytest.raises(ConfigError, match=r"cannot read image .*1.jpg.*skip_corrupt_images"):
        next(iter(dm.train_dataloader()))
    dm = KarpathyDataModule(root=str(root), image_size=32, patch_size=8, num_workers=0, batch_size=4,
                            vocab_size=60, skip_corrupt_images=True)  # fmt: skip
    dm.setup("fit")
    with pytest.warns(UserWarning, match=r"skipping corrupt image .*1.jpg"):
        batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[0] == 2  # the two captions of the corrupt image are dropped


def test_bad_options_fail_early():
    with pytest.raises(ConfigError, match="unknown augment 'flip'"):
        SceneDataModule(augment="flip")
    with pytest.raises(ConfigError, match="unknown task"):
        SceneDataModule(task="nlvr2")
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        SceneDataModule(image_size=30, patch_size=8)


def test_scene_questions_have_one_answer_with_full_score():
    dm = SceneDataModule(task="vqa", num_train=8, num_val=4, batch_size=8)
    dm.setup("fit")
    targets = next(iter(dm.train_dataloader()))["targets"]
    assert targets.shape == (8, len(dm.answers)) and {"yes", "no", "red", "circle"} <= set(dm.answers)
    assert torch.equal(targets.max(1).values, torch.ones(8)) and torch.equal(targets.sum(1), torch.ones(8))
