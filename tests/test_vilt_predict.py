"""ViLT zero-shot evaluation and predict: `test` on pretrained weights ranks with the ITM head, predict writes the ITM
scores and rankings / the VQA top-k answers, refuses random weights, writes every good row and lists bad files."""

import csv
import json

import pytest
import test_vilt_modules
import torch
from conftest import run_main as run
from PIL import Image
from test_vilt_modules import cli_args, metrics

from lit_vit.cli import main
from lit_vit.data import SceneDataModule
from lit_vit.data.image_text.predict import read_predict_pairs
from lit_vit.data.image_text.scenes import Scenes
from lit_vit.errors import ConfigError
from lit_vit.modules import ViltPretraining, ViltVQA
from lit_vit.modules.vilt import retrieval_recall

pytestmark = pytest.mark.usefixtures("one_thread")

pretrain_run = test_vilt_modules.pretrain_run  # the tiny pre-training run of test_vilt_modules (a module fixture)

# the model of test_vilt_modules.cli_args (its pre-training run), for the commands that do not fit
TINY_MODEL = ["--model.model.init_args.embed_dim=32", "--model.model.init_args.depth=1",
              "--model.model.init_args.num_heads=2"]  # fmt: skip


def test_zero_shot_retrieval_ranks_every_pair_with_the_pretrained_itm_head(pretrain_run, tmp_path, capsys):
    ckpt = pretrain_run / "checkpoints" / "last.ckpt"
    run_dir = tmp_path / "zero_shot"
    args = ["test", "--config=experiments/vilt_retrieval_embedded.yaml", f"--model.init_args.pretrained={ckpt}",
            f"--trainer.default_root_dir={run_dir}", "--data.init_args.num_test=6",
            "--trainer.enable_progress_bar=false", *TINY_MODEL]  # fmt: skip
    code, err = run(args, capsys)
    assert code == 0 and "evaluating the pretrained weights" in err
    logged = metrics(run_dir, "test")
    # by hand: the pre-trained model's ITM "match" logit of every (image, caption) of the 6 x 12 test grid
    module = ViltPretraining.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = SceneDataModule(num_test=6, eval_batch_size=72)
    dm.setup("test")
    dm.use_vocab(module.vocab)
    grid = dm.retrieval_dataset("test")
    batch = next(iter(dm.eval_loader(grid, collate_fn=dm.collate())))
    with torch.no_grad():
        match = module.model.itm_logits(module(batch))[:, 1]
    scores = torch.zeros(6, 12)
    scores[batch["image_index"], batch["index"]] = match
    for name, value in retrieval_recall(scores, grid.text_image).items():
        assert logged[f"test/{name}"] == pytest.approx(value.item(), abs=1e-6), name
    assert logged["test/tr_r1"] <= logged["test/tr_r5"] <= logged["test/tr_r10"]


def test_evaluating_without_trained_weights_is_refused(pretrain_run, tmp_path, capsys):
    ckpt = pretrain_run / "checkpoints" / "last.ckpt"
    base = ["--trainer.enable_progress_bar=false", "--data.init_args.num_test=4", *TINY_MODEL]
    # no checkpoint and no pretrained weights: random weights are never evaluated
    code, err = run(["test", "--config=experiments/vilt_retrieval_embedded.yaml",
                     f"--trainer.default_root_dir={tmp_path / 'a'}", *base], capsys)  # fmt: skip
    assert code == 2 and "test needs trained weights" in err and "--model.init_args.pretrained" in err
    # pre-training weights have no VQA head: a VQA evaluation of them would be random
    code, err = run(["validate", "--config=experiments/vilt_vqa_embedded.yaml", f"--model.init_args.pretrained={ckpt}",
                     f"--trainer.default_root_dir={tmp_path / 'b'}", *base[:1], *TINY_MODEL], capsys)  # fmt: skip
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: validate without --ckpt_path evaluates")
    assert "has no trained vqa_head" in err


# --- predict ---------------------------------------------------------------------------------------------------------
def write_scenes(folder, n: int = 3) -> list[list[str]]:
    """Scenes 0..n-1 of the test split as s<i>.png, a file that is no image (bad.png); the captions of each scene."""
    folder.mkdir(parents=True, exist_ok=True)
    scenes = Scenes(n, SceneDataModule.SPLIT_SEEDS["test"])
    for i in range(n):
        Image.fromarray(scenes.load(i)).save(folder / f"s{i}.png")
    (folder / "bad.png").write_text("not an image")
    return [scenes.captions(i) for i in range(n)]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_predict_writes_itm_scores_and_rankings_and_lists_bad_files(pretrain_run, tmp_path, capsys):
    captions = write_scenes(tmp_path / "in")
    first = [c[0] for c in captions]
    inputs = [{"image": "s0.png", "texts": first},  # one image, three texts: a ranking of the texts
              {"text": first[1], "images": ["s1.png", "s2.png", "bad.png", "missing.png"]}]  # fmt: skip
    (tmp_path / "in" / "pairs.json").write_text(json.dumps(inputs))
    out = tmp_path / "pred.csv"
    ckpt = pretrain_run / "checkpoints" / "last.ckpt"
    args = ["predict", "--config=experiments/vilt_pretrain_embedded.yaml", f"--model.init_args.pretrained={ckpt}",
            f"--trainer.default_root_dir={tmp_path / 'run'}", f"--data.init_args.predict_path={tmp_path}/in/pairs.json",
            f"--predict_output={out}", "--trainer.enable_progress_bar=false", *TINY_MODEL]  # fmt: skip
    code, err = run(args, capsys)
    # every good row is written, then the unreadable files are listed in one error line
    assert code == 2 and "error: 2 image file(s) could not be read" in err and "bad.png, missing.png" in err
    rows = read_csv(out)
    assert list(rows[0]) == ["image", "text", "score", "text_rank", "image_rank"]
    assert len(rows) == 5  # s0 x 3 texts, then first[1] x s1, s2 (bad.png and missing.png have no row)
    s0 = [r for r in rows if r["image"] == "s0.png"]
    assert sorted(r["text"] for r in s0) == sorted(first)
    assert [int(r["text_rank"]) for r in s0] == [1, 2, 3]  # s0's texts, best first
    assert [float(r["score"]) for r in s0] == sorted((float(r["score"]) for r in s0), reverse=True)
    # the image ranking of first[1] over s0 (from the first entry), s1 and s2
    by_image = {r["image"]: r for r in rows if r["text"] == first[1]}
    assert sorted(int(r["image_rank"]) for r in by_image.values()) == [1, 2, 3]
    best = min(by_image.values(), key=lambda r: int(r["image_rank"]))
    assert float(best["score"]) == max(float(r["score"]) for r in by_image.values())
    # the score is the ITM probability of a match, computed here by hand for (s1, its own caption)
    module = ViltPretraining.load_from_checkpoint(ckpt, map_location="cpu").eval()
    dm = SceneDataModule(predict_path=str(tmp_path / "in" / "pairs.json"), eval_batch_size=16)
    dm.setup("predict")
    dm.use_vocab(module.vocab)
    k = [i for i, p in enumerate(dm.predict_pairs) if p.image == "s1.png"][0]
    batch = dm.predict_dataloader().collate_fn([dm.datasets["predict"][k]])
    with torch.no_grad():
        p = module.model.itm_logits(module(batch)).softmax(-1)[0, 1].item()
    assert float(by_image["s1.png"]["score"]) == pytest.approx(p, abs=1e-5)


@pytest.fixture(scope="module")
def vqa_run(pretrain_run, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vilt_vqa") / "vqa"
    main(cli_args("vilt_vqa_embedded.yaml", run_dir, f"--model.pretrained={pretrain_run}/checkpoints/last.ckpt"))
    return run_dir


def test_vqa_predict_writes_the_top_k_answers(vqa_run, tmp_path, capsys):
    write_scenes(tmp_path)
    questions = Scenes(3, SceneDataModule.SPLIT_SEEDS["test"])
    with open(tmp_path / "q.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "question"])
        writer.writerows((f"s{i}.png", q) for i in range(3) for q, _ in questions.questions(i)[:2])
    out = tmp_path / "answers.csv"
    code, err = run(["predict", f"--config={vqa_run}/config.yaml", "--ckpt_path=best", f"--predict_output={out}",
                     f"--data.init_args.predict_path={tmp_path}/q.csv", "--predict_top_k=3"], capsys)  # fmt: skip
    assert code == 0, err
    rows = read_csv(out)
    assert list(rows[0]) == ["image", "question", "answer_1", "score_1", "answer_2", "score_2", "answer_3", "score_3"]
    assert [(r["image"], r["question"]) for r in rows] == [
        (f"s{i}.png", q) for i in range(3) for q, _ in questions.questions(i)[:2]
    ]
    module = ViltVQA.load_from_checkpoint(vqa_run / "checkpoints" / "best.ckpt", map_location="cpu").eval()
    for r in rows:
        scores = [float(r[f"score_{k}"]) for k in (1, 2, 3)]
        assert scores == sorted(scores, reverse=True) and all(0 < s < 1 for s in scores)
        assert {r["answer_1"], r["answer_2"], r["answer_3"]} <= set(module.answers)
    # random weights: a VQA predict needs a fine-tuned checkpoint (or pretrained weights with a VQA head)
    args = ["predict", "--config=experiments/vilt_vqa_embedded.yaml", f"--trainer.default_root_dir={tmp_path}/r",
            f"--data.init_args.predict_path={tmp_path}/q.csv", *TINY_MODEL]  # fmt: skip
    code, err = run(args, capsys)
    assert code == 2 and "predict needs trained weights" in err


def test_bad_predict_inputs_are_one_line_errors(tmp_path):
    (tmp_path / "a.csv").write_text("picture,text\nx.png,a red circle\n")
    with pytest.raises(ConfigError, match=r"has columns \['picture', 'text'\]; it needs a header with image and text"):
        read_predict_pairs(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("image,question\nx.png,  \n")
    with pytest.raises(ConfigError, match=r"b.csv row 2: empty question"):
        read_predict_pairs(tmp_path / "b.csv")
    (tmp_path / "c.json").write_text(json.dumps([{"images": ["x.png", "y.png"], "texts": ["a", "b"]}]))
    with pytest.raises(ConfigError, match=r"c.json entry 0 gives several images and several texts"):
        read_predict_pairs(tmp_path / "c.json")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ConfigError, match=r"unknown format '.txt'; give a .csv or .json file"):
        read_predict_pairs(tmp_path / "d.txt")
    with pytest.raises(ConfigError, match=r"predict_path .*nothing.csv does not exist"):
        read_predict_pairs(tmp_path / "nothing.csv")
    # relative image paths are read from the input file's folder
    (tmp_path / "e.json").write_text(json.dumps({"text": "a red circle", "images": ["x.png", "/abs/y.png"]}))
    pairs = read_predict_pairs(tmp_path / "e.json")
    assert [(p.image, str(p.path), p.text) for p in pairs] == [
        ("x.png", str(tmp_path / "x.png"), "a red circle"),
        ("/abs/y.png", "/abs/y.png", "a red circle"),
    ]
