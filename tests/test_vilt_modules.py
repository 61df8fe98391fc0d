"""ViLT LightningModules: retrieval metrics by hand, losses decreasing on the embedded scenes, CLI fits of the
embedded experiments, self-contained checkpoints (vocabulary, answers), fine-tuning from a pre-training run."""

import csv
import math

import pytest
import torch

from lit_vit.cli import main
from lit_vit.data import SceneDataModule
from lit_vit.data.image_text import vqa_score
from lit_vit.errors import ConfigError
from lit_vit.models import ViLT
from lit_vit.modules import ViltPretraining, ViltRetrieval, ViltVQA
from lit_vit.modules.optim import warmup_linear
from lit_vit.modules.vilt import retrieval_recall

pytestmark = pytest.mark.usefixtures("one_thread")


def test_retrieval_recall_against_a_hand_computed_example():
    # 3 images, 5 texts; texts 0, 1 belong to image 0, text 2 to image 1, texts 3, 4 to image 2
    text_image = torch.tensor([0, 0, 1, 2, 2])
    scores = torch.tensor(
        [
            [0.1, 0.9, 0.8, 0.3, 0.2],  # image 0: best text 1 (its own)           -> hit @1
            [0.7, 0.2, 0.6, 0.5, 0.1],  # image 1: ranks 0, 2, ...: own text 2nd  -> miss @1, hit @2
            [0.9, 0.1, 0.2, 0.35, 0.4],  # image 2: ranks 0, 4: own text 4 is 2nd -> miss @1, hit @2
        ]
    )
    r = retrieval_recall(scores, text_image, ks=(1, 2, 5))
    assert r["tr_r1"].item() == pytest.approx(1 / 3)
    assert r["tr_r2"].item() == pytest.approx(1.0)
    # text -> image (columns): t0 ranks images 2, 1, 0 (own 0 third: miss @2); t1 image 0 first (hit); t2 ranks
    # 0, 1 (own 1 second); t3 ranks 1, 2 (own 2 second); t4 image 2 first (hit)
    assert r["ir_r1"].item() == pytest.approx(2 / 5)
    assert r["ir_r2"].item() == pytest.approx(4 / 5)
    assert r["ir_r5"].item() == 1.0 and r["tr_r5"].item() == 1.0
    assert r["r_mean"].item() == pytest.approx((1 / 3 + 1 + 1 + 2 / 5 + 4 / 5 + 1) / 6)


def test_any_caption_in_top_k_is_a_hit_for_image_to_text():
    # image 0 has two captions; only one of them in the top 1 is enough (hit rate, not recall)
    r = retrieval_recall(torch.tensor([[0.9, 0.1, 0.5]]), torch.tensor([0, 0, 0]), ks=(1,))
    assert r["tr_r1"].item() == 1.0


def reference_recall(scores: torch.Tensor, text_image: torch.Tensor, k: int) -> tuple[float, float]:
    """Image->text and text->image Recall@k by sorting every row and column in Python."""
    n_img, n_txt = scores.shape
    rows = [sorted(range(n_txt), key=lambda j: -scores[i, j].item())[:k] for i in range(n_img)]
    tr = sum(any(text_image[j] == i for j in top) for i, top in enumerate(rows)) / n_img
    cols = [sorted(range(n_img), key=lambda i: -scores[i, j].item())[:k] for j in range(n_txt)]
    ir = sum(int(text_image[j]) in top for j, top in enumerate(cols)) / n_txt
    return tr, ir


def test_retrieval_recall_of_known_rankings():
    n = 6
    text_image = torch.randperm(n, generator=torch.Generator().manual_seed(0))  # text j belongs to image text_image[j]
    own = text_image[None, :] == torch.arange(n)[:, None]  # images x texts
    noise = torch.rand(n, n, generator=torch.Generator().manual_seed(1))
    # the matching pair scores best in its row and its column: every recall is 1
    r = retrieval_recall(torch.where(own, 2.0, noise), text_image, ks=(1, 5, 10))
    assert {k: v.item() for k, v in r.items()} == dict.fromkeys(r, 1.0)
    # reversed: the matching pair scores worst, so only K >= 6 (every candidate) finds it
    r = retrieval_recall(torch.where(own, -1.0, noise), text_image, ks=(1, 5, 10))
    assert [r[f"{d}_r{k}"].item() for d in ("tr", "ir") for k in (1, 5, 10)] == [0, 0, 1, 0, 0, 1]
    assert r["r_mean"].item() == pytest.approx(2 / 6)
    # a staircase: image i's own text is its (i + 1)-th best, so image->text R@K is K / 6
    rank = torch.empty(n, n)
    for i in range(n):
        others = [j for j in range(n) if not own[i, j]]
        order = others[:i] + [int(own[i].nonzero())] + others[i:]  # texts from best to worst
        rank[i, order] = torch.arange(n, dtype=torch.float)
    r = retrieval_recall(-rank, text_image, ks=(1, 2, 5))
    assert [r[f"tr_r{k}"].item() for k in (1, 2, 5)] == pytest.approx([1 / 6, 2 / 6, 5 / 6])


def test_retrieval_recall_equals_a_sort_by_hand_on_random_scores():
    gen = torch.Generator().manual_seed(0)
    for n_img, per_image in [(5, 1), (4, 3), (7, 2)]:
        text_image = torch.arange(n_img).repeat_interleave(per_image)[torch.randperm(n_img * per_image, generator=gen)]
        scores = torch.randn(n_img, n_img * per_image, generator=gen)
        r = retrieval_recall(scores, text_image, ks=(1, 2, 3))
        for k in (1, 2, 3):
            tr, ir = reference_recall(scores, text_image, k)
            assert r[f"tr_r{k}"].item() == pytest.approx(tr) and r[f"ir_r{k}"].item() == pytest.approx(ir)


def test_vqa_soft_score_is_the_official_average_over_the_ten_sets_of_nine_annotators():
    # VQA accuracy (Antol et al., 2015; the VQA-v2 evaluation code): min(#humans that said it / 3, 1), averaged over
    # the 10 subsets of 9 of the 10 annotators
    for count in range(11):
        answers = [True] * count + [False] * (10 - count)
        official = sum(min(sum(answers[:i] + answers[i + 1 :]) / 3, 1) for i in range(10)) / 10
        assert vqa_score(count) == pytest.approx(official), count
    assert [vqa_score(c) for c in range(5)] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])


def test_vqa_metric_is_the_soft_score_of_the_top_answer_and_the_loss_is_vilts_bce(monkeypatch):
    module = ViltVQA(ViLT(**TINY | {"num_answers": 3}))
    # 4 questions x 3 answers; annotator counts per answer -> soft scores
    counts = torch.tensor([[10, 0, 0], [8, 2, 0], [0, 3, 1], [0, 0, 0]])
    targets = torch.tensor([[vqa_score(int(c)) for c in row] for row in counts])
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 3.0], [0.5, -2.0, 0.0]])
    # the top answers: 0 (score 1.0), 1 (0.6), 2 (0.3), 0 (0.0)
    monkeypatch.setattr(module, "forward", lambda batch: None)
    monkeypatch.setattr(module.model, "vqa_logits", lambda out: logits)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    module.validation_step({"targets": targets}, 0)
    assert module.val_score.compute().item() == pytest.approx((1.0 + 0.6 + 0.3 + 0.0) / 4)
    # ViLT's loss: binary cross-entropy on the soft scores, mean over all entries, times the number of answers
    p = torch.sigmoid(logits)
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean() * 3
    assert module.training_step({"targets": targets}, 0).item() == pytest.approx(expected.item(), rel=1e-5)


def test_warmup_then_linear_decay_to_zero():
    assert warmup_linear(0, 10, 100) == pytest.approx(0.1)
    assert warmup_linear(9, 10, 100) == pytest.approx(1.0)
    assert warmup_linear(55, 10, 100) == pytest.approx(0.5)
    assert warmup_linear(100, 10, 100) == 0.0


TINY = dict(max_text_len=16, img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
            drop_rate=0.0, max_image_len=12)  # fmt: skip


class _Trainer:
    def __init__(self, dm):
        self.datamodule = dm


def attach(module, dm):
    module._trainer = _Trainer(dm)
    module.setup("fit")
    module._trainer = None
    return module


def fit_one_batch(module, batch, steps: int, lr: float = 2e-3) -> list[dict]:
    opt = torch.optim.AdamW(module.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        torch.manual_seed(0)  # the same masks and negatives every step: the losses of one fixed problem
        r = module.losses(batch, torch.Generator().manual_seed(0)) if hasattr(module, "losses") else None
        if r is None:
            r = {"loss": module.training_step(batch, 0)}
        opt.zero_grad()
        r["loss"].backward()
        opt.step()
        history.append({k: float(v.detach().float().mean()) for k, v in r.items()})
    return history


@pytest.fixture(scope="module")
def scenes():
    dm = SceneDataModule(num_train=32, num_val=8, batch_size=16)
    dm.setup("fit")
    return dm


def test_pretraining_losses_decrease(scenes, monkeypatch):
    torch.manual_seed(0)
    module = attach(ViltPretraining(ViLT(**TINY), mlm_prob=0.3, wpa_weight=1.0), scenes)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    batch = next(iter(scenes.train_dataloader()))
    h = fit_one_batch(module, batch, 45, lr=3e-3)
    for name in ("itm_loss", "mlm_loss", "wpa_loss", "loss"):
        assert h[-1][name] < h[0][name] - 0.2, (name, h[0][name], h[-1][name])


@pytest.mark.slow
def test_retrieval_and_vqa_losses_decrease(monkeypatch):
    torch.manual_seed(0)
    dm = SceneDataModule(num_train=32, num_val=8, batch_size=16)
    dm.setup("fit")
    module = attach(ViltRetrieval(ViLT(**TINY), num_negatives=3), dm)
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    h = fit_one_batch(module, next(iter(dm.train_dataloader())), 150, lr=1e-3)
    # the rank loss starts at chance, log(1 + num_negatives), and may sit on that plateau for tens of steps before it
    # learns to tell the matching caption (how long depends on the torch build's random stream): within 150 steps it
    # must get well below chance (measured: 0.47 on one thread, 0.75 on two, with torch 2.14.1)
    assert h[0]["loss"] == pytest.approx(math.log(4), abs=1e-3)
    assert min(x["loss"] for x in h) < math.log(4) - 0.3

    dm = SceneDataModule(task="vqa", num_train=16, num_val=8, batch_size=16)
    dm.setup("fit")
    module = attach(ViltVQA(ViLT(**TINY)), dm)
    assert module.model.num_answers == len(dm.answers) > 10
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    h = fit_one_batch(module, next(iter(dm.train_dataloader())), 20)
    assert h[-1]["loss"] < 0.7 * h[0]["loss"]


def test_bad_module_options_fail_early(scenes):
    with pytest.raises(ConfigError, match="mlm_prob"):
        ViltPretraining(ViLT(**TINY), mlm_prob=0.0)
    with pytest.raises(ConfigError, match="max_text_len 16 exceeds the model's max_text_len 8"):
        attach(ViltPretraining(ViLT(**TINY | {"max_text_len": 8})), scenes)
    with pytest.raises(ConfigError, match="the data has no answers"):
        attach(ViltVQA(ViLT(**TINY)), scenes)


# --- CLI -----------------------------------------------------------------------------------------------------------
def cli_args(config: str, run_dir, *extra: str) -> list[str]:
    return [
        "fit",
        f"--config=experiments/{config}",
        f"--trainer.default_root_dir={run_dir}",
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=3",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--model.model.init_args.embed_dim=32",
        "--model.model.init_args.depth=1",
        "--model.model.init_args.num_heads=2",
        "--data.init_args.num_train=48",
        "--data.init_args.num_val=8",
        "--data.init_args.batch_size=16",
        *extra,
    ]


def metrics(run_dir, evaluation: str | None = None) -> dict[str, float]:
    """The run's training metrics.csv, or the newest `<run>/evaluations/<evaluation>-*/metrics.csv` (test / validate
    write their metrics there, never into the training file)."""
    path = run_dir / "metrics.csv"
    if evaluation is not None:
        path = sorted((run_dir / "evaluations").glob(f"{evaluation}-*/metrics.csv"))[-1]
    out = {}
    for row in csv.DictReader(open(path)):
        out |= {k: float(v) for k, v in row.items() if v}
    return out


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vilt") / "pretrain"
    main(cli_args("vilt_pretrain_embedded.yaml", run_dir))
    return run_dir


def test_cli_fit_pretraining_writes_a_self_contained_checkpoint(pretrain_run):
    m = metrics(pretrain_run)
    for name in ("val/itm_acc", "val/mlm_acc", "val/itm_loss", "val/mlm_loss", "val/wpa_loss", "train/loss_step"):
        assert name in m
    assert (pretrain_run / "vocab.txt").is_file() and (pretrain_run / "checkpoints" / "best.ckpt").is_file()
    module = ViltPretraining.load_from_checkpoint(pretrain_run / "checkpoints" / "last.ckpt", map_location="cpu")
    assert module.vocab == (pretrain_run / "vocab.txt").read_text().splitlines()
    assert module.model.vocab_size == len(module.vocab) and module.model.embed_dim == 32


def test_cli_fit_retrieval_from_the_pretraining_run(pretrain_run, tmp_path):
    run_dir = tmp_path / "retrieval"
    main(cli_args("vilt_retrieval_embedded.yaml", run_dir, f"--model.pretrained={pretrain_run}/checkpoints/last.ckpt",
                  "--data.init_args.eval_batch_size=32"))  # fmt: skip
    m = metrics(run_dir)
    recalls = [m[f"val/{d}_r{k}"] for d in ("tr", "ir") for k in (1, 5, 10)]
    assert m["val/r_mean"] == pytest.approx(sum(recalls) / 6)
    # the whole 8 x 16 validation grid was scored: image->text recalls count 8 images, text->image ones 16 captions
    for k in (1, 5, 10):
        assert (m[f"val/tr_r{k}"] * 8) == pytest.approx(round(m[f"val/tr_r{k}"] * 8), abs=1e-4)
        assert (m[f"val/ir_r{k}"] * 16) == pytest.approx(round(m[f"val/ir_r{k}"] * 16), abs=1e-4)
    main(["test", f"--config={run_dir}/config.yaml", "--ckpt_path=best", "--data.init_args.num_test=6",
          "--trainer.limit_test_batches=null"])  # fmt: skip
    assert not any(k.startswith("test/") for k in metrics(run_dir))  # the training metrics.csv is left as it was
    m = metrics(run_dir, "test")
    assert m["test/tr_r1"] <= m["test/tr_r5"] <= m["test/tr_r10"]
    assert m["test/ir_r10"] == 1.0  # 6 candidate images: the top 10 of a caption's ranking holds them all
    for k in (1, 5, 10):  # the whole 6 x 12 test grid was scored
        assert (m[f"test/tr_r{k}"] * 6) == pytest.approx(round(m[f"test/tr_r{k}"] * 6), abs=1e-4)
        assert (m[f"test/ir_r{k}"] * 12) == pytest.approx(round(m[f"test/ir_r{k}"] * 12), abs=1e-4)
    pre = torch.load(pretrain_run / "checkpoints" / "last.ckpt", weights_only=True)
    ft = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ft["vilt_vocab"] == pre["vilt_vocab"]  # the data used the pre-trained vocabulary


def test_cli_fit_vqa(tmp_path):
    run_dir = tmp_path / "vqa"
    main(cli_args("vilt_vqa_embedded.yaml", run_dir))
    score = metrics(run_dir)["val/vqa_score"]
    # the mean over the 100 validation questions of a soft score in steps of 0.1 (0.3 a vote, 1.0 from 4 votes)
    assert score * 1000 == pytest.approx(round(score * 1000), abs=1e-3)
    module = ViltVQA.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    assert module.model.num_answers == len(module.answers) and "yes" in module.answers
    # best.ckpt holds the weights that scored it: validating them again gives the same score
    best = torch.load(run_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    (chosen,) = [v["best_model_score"] for v in best["callbacks"].values() if "best_model_score" in v]
    assert float(chosen) == pytest.approx(score)
    main(["validate", f"--config={run_dir}/config.yaml", "--ckpt_path=best"])
    assert metrics(run_dir, "validate")["val/vqa_score"] == pytest.approx(score)


def test_cli_reports_a_wrong_pretrained_layout(tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    torch.save({"conv1.weight": torch.zeros(2)}, bad)
    with pytest.raises(SystemExit) as err:
        main(cli_args("vilt_vqa_embedded.yaml", tmp_path / "run", f"--model.pretrained={bad}"))
    assert err.value.code == 2
    assert "cannot recognise the checkpoint layout" in capsys.readouterr().err
