import csv

import pytest
import torch
from conftest import tiny_fit_args

from lit_vit.callbacks import FewShotEval
from lit_vit.callbacks.fewshot import draw_kshot, fewshot_accuracy, ridge_fit, ridge_predict
from lit_vit.cli import main
from lit_vit.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def random_problem(n: int, d: int, classes: int, seed: int = 0):
    """Gaussian classes around fixed means (the same for every seed: one problem, independent samples)."""
    means = 2.0 * torch.randn(classes, d, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = means[y] + torch.randn(n, d, generator=g) + 3.0  # an offset: the intercept must absorb it
    return x, y


@pytest.mark.parametrize("n, d", [(30, 8), (20, 64)])  # more samples than features, and fewer (the few-shot case)
def test_ridge_solution_equals_sklearn_ridge_classifier(n, d):
    from sklearn.linear_model import RidgeClassifier

    x, y = random_problem(n, d, classes=5)
    targets = 2.0 * torch.nn.functional.one_hot(y, 5).double() - 1.0
    for l2 in (1e-2, 1.0, 30.0):
        (w,), _ = ridge_fit(x, targets, [l2])
        ref = RidgeClassifier(alpha=l2, fit_intercept=True, solver="svd").fit(x.double().numpy(), y.numpy())
        torch.testing.assert_close(w[:-1].t(), torch.from_numpy(ref.coef_), rtol=1e-8, atol=1e-9)
        torch.testing.assert_close(w[-1], torch.from_numpy(ref.intercept_), rtol=1e-8, atol=1e-9)
        xt, _ = random_problem(40, d, classes=5, seed=1)
        scores = ridge_predict(w, xt)
        torch.testing.assert_close(scores, torch.from_numpy(ref.decision_function(xt.double().numpy())))


def test_closed_form_leave_one_out_error_equals_refitting_without_each_sample():
    x, y = random_problem(15, 40, classes=3)
    targets = 2.0 * torch.nn.functional.one_hot(y, 3).double() - 1.0
    l2s = [1e-1, 3.0, 100.0]
    _, loo = ridge_fit(x, targets, l2s)
    for j, l2 in enumerate(l2s):
        errors = []
        for i in range(len(x)):
            keep = torch.arange(len(x)) != i
            (w,), _ = ridge_fit(x[keep], targets[keep], [l2])
            errors.append((ridge_predict(w, x[i : i + 1]) - targets[i]).pow(2).mean())
        torch.testing.assert_close(loo[j], torch.stack(errors).mean(), rtol=1e-9, atol=1e-12)


def test_l2_strength_is_chosen_on_the_training_features_only():
    x, y = random_problem(50, 30, classes=5)
    xt, yt = random_problem(200, 30, classes=5, seed=2)
    acc_a, l2_a = fewshot_accuracy(x, y, xt, yt, 5)
    acc_b, l2_b = fewshot_accuracy(x, y, xt, yt[torch.randperm(200)], 5)  # other test labels: same l2, same fit
    assert l2_a == l2_b
    assert acc_a > 0.9 and acc_b < 0.5


def test_kshot_draws_are_nested_per_class_and_refuse_too_few_images():
    targets = torch.arange(60) % 3
    draw = draw_kshot(targets, 3, 10, torch.Generator().manual_seed(0))
    assert draw.shape == (3, 10) and len(draw.flatten().unique()) == 30
    assert all((targets[row] == c).all() for c, row in enumerate(draw))
    with pytest.raises(ConfigError, match="needs 21 train images of every class but class 0 has 20 in the train"):
        draw_kshot(targets, 3, 21, torch.Generator())


@pytest.mark.parametrize("kwargs", [{"shots": [0, 5]}, {"shots": []}, {"draws": 0}, {"every_n_epochs": 0}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ConfigError, match="FewShotEval"):
        FewShotEval(**kwargs)


def test_callback_logs_kshot_accuracy_to_metrics_csv_in_a_real_fit(run_dir):
    init = {"shots": [1, 5], "draws": 2, "every_n_epochs": 1}
    callback = {"class_path": "lit_vit.callbacks.FewShotEval", "init_args": init}
    main(tiny_fit_args(run_dir, f"--trainer.callbacks=[{callback}]".replace("'", '"'), max_epochs=2))
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("fewshot/5shot")]
    # every_n_epochs=1: one row after each of the 2 epochs, and the end of fit adds none (the weights are the same)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    for r in rows:
        one, five = float(r["fewshot/1shot"]), float(r["fewshot/5shot"])
        for acc in (one, five):  # the mean of 2 draws, each scored on all 269 validation digits
            assert acc * 2 * 269 == pytest.approx(round(acc * 2 * 269), abs=1e-6)
        assert five > 0.2  # 10 classes: chance is 0.1; 8 steps of training already separate the digits a little


def test_callback_restores_train_mode_and_needs_no_augmentation():
    from lit_vit.data import DigitsDataModule
    from lit_vit.models import VisionTransformer
    from lit_vit.modules import ImageClassifier

    class Trainer:
        datamodule = DigitsDataModule(batch_size=64)

    Trainer.datamodule.setup("fit")
    model = ImageClassifier(VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1,
                                              num_heads=2, drop_rate=0.5), num_classes=10)  # fmt: skip
    model.train()
    cb = FewShotEval(shots=[1, 10], draws=2)
    first = cb.evaluate(Trainer, model)
    assert model.backbone.training
    assert first == cb.evaluate(Trainer, model)  # dropout off and no augmentation: the same numbers twice
    assert first[10] > first[1] > 0.1  # even a random ViT's features separate digits better than chance


def test_fewshot_on_a_datamodule_without_splits_is_refused_before_training():
    import lightning as L

    from lit_vit.models import VisionTransformer
    from lit_vit.modules import ImageClassifier

    class Plain(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([(torch.zeros(1, 16, 16), 0)] * 4, batch_size=2)

    backbone = VisionTransformer(img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2)
    trainer = L.Trainer(max_epochs=1, callbacks=[FewShotEval()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(ConfigError, match="FewShotEval needs a lit_vit image DataModule"):
        trainer.fit(ImageClassifier(backbone, num_classes=2), datamodule=Plain())
    assert trainer.global_step == 0


def test_sweep_results_gain_kshot_columns_and_accuracy_png_a_probe_panel(tmp_path):
    from PIL import Image

    from lit_vit.ablation.plots import plot_accuracy
    from lit_vit.ablation.results import read_results, summarise_run, write_results

    header = "epoch,step,val/acc1,val/acc5,val/loss,fewshot/1shot,fewshot/5shot\n"
    rows = []
    for seed, probe in ((0, "0.5"), (1, "0.7")):
        run = tmp_path / "learned_1d" / f"seed={seed}"
        run.mkdir(parents=True)
        (run / "metrics.csv").write_text(
            header + "0,10,0.8,0.9,1.0,,\n0,10,,,,0.2,0.4\n1,20,0.9,1.0,0.5,,\n1,20,,,,0.3," + probe + "\n"
        )
        rows.append(summarise_run(run, "learned_1d", seed, params=1, train_images_per_s=1.0, wall_s=1.0))
    assert rows[1]["fewshot_5shot"] == 0.7 and rows[1]["fewshot_1shot"] == 0.3  # the last probe of the run
    write_results(tmp_path, rows)
    back = read_results(tmp_path)
    assert [r["fewshot_5shot"] for r in back] == [0.5, 0.7] and back[0]["fewshot_1shot"] == 0.3
    with_probe = Image.open(plot_accuracy(tmp_path, back)).size[0]
    without = Image.open(plot_accuracy(tmp_path, [{k: v for k, v in r.items() if "shot" not in k} for r in back]))
    assert with_probe > 1.4 * without.size[0]  # two panels: top-1 and the 5-shot probe side by side


def test_more_shots_than_the_smallest_class_has_is_refused_before_training(run_dir, capsys):
    callback = {"class_path": "lit_vit.callbacks.FewShotEval", "init_args": {"shots": [5, 200]}}
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_fit_args(run_dir, f"--trainer.callbacks=[{callback}]".replace("'", '"')))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "needs 200 train images of every class but class" in err and "lower FewShotEval shots to at most" in err
    assert not (run_dir / "checkpoints" / "last.ckpt").exists()
