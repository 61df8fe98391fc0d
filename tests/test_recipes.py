"""The DeiT-style training recipe: per-image policies, batch mixing, EMA of the weights, layer-wise lr decay."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import yaml
from conftest import TINY_VIT, tiny_fit_args

from lit_vit.callbacks import EMA
from lit_vit.cli import main
from lit_vit.data import DigitsDataModule
from lit_vit.data.augment import AugmentPolicy, NoisyRandAugment, PolicyPipeline
from lit_vit.errors import ConfigError
from lit_vit.models import T2TViT, VisionTransformer
from lit_vit.modules import ImageClassifier
from lit_vit.modules.mixing import BatchMixer, Mixup

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]

# one option on at a time (the others off), each against the plain pad-and-crop pipeline
OPTIONS = {
    "randaugment": dict(auto_augment="randaugment"),
    "randaugment_no_noise": dict(auto_augment="randaugment", magnitude_std=0.0),
    "trivialaugment": dict(auto_augment="trivialaugment"),
    "autoaugment": dict(auto_augment="autoaugment", autoaugment_policy="imagenet"),
    "color_jitter": dict(auto_augment=None, color_jitter=0.4),
    "erasing_pixel": dict(auto_augment=None, erasing_prob=1.0, erasing_mode="pixel"),
    "erasing_const": dict(auto_augment=None, erasing_prob=1.0, erasing_mode="const"),
}


def train_items(policy: AugmentPolicy | None, items) -> list[tuple[torch.Tensor, int]]:
    dm = DigitsDataModule(augment_policy=policy)
    dm.setup("fit")
    return [dm.datasets["train"][item] for item in items]


@pytest.mark.parametrize("name", OPTIONS)
def test_each_policy_option_changes_images_deterministically_and_never_the_labels(name):
    items = [(i, 1000 + i) for i in range(0, 400, 25)]  # (index, per-sample seed) as SeededSampler yields them
    plain = train_items(None, items)
    a = train_items(AugmentPolicy(**OPTIONS[name]), items)
    b = train_items(AugmentPolicy(**OPTIONS[name]), items)
    other_seeds = train_items(AugmentPolicy(**OPTIONS[name]), [(i, s + 1) for i, s in items])
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b))  # the same seed: the same images
    assert [t for _, t in a] == [t for _, t in plain] == [t for _, t in other_seeds]  # labels untouched
    assert all(x.shape == p.shape and x.dtype == p.dtype for (x, _), (p, _) in zip(a, plain))
    changed = sum(not torch.equal(x, p) for (x, _), (p, _) in zip(a, plain))
    assert changed >= len(items) // 2, f"{name} changed only {changed} of {len(items)} images"
    assert any(not torch.equal(x, y) for (x, _), (y, _) in zip(a, other_seeds))  # other seeds, other images


def test_policy_pipeline_leaves_the_process_rng_alone():
    dm = DigitsDataModule(augment_policy=AugmentPolicy(erasing_prob=0.5))
    dm.setup("fit")
    assert isinstance(dm.datasets["train"].transform, PolicyPipeline)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    dm.datasets["train"][(7, 123)]
    assert torch.equal(torch.rand(3), expected)


def test_randaugment_magnitude_is_on_timms_scale_with_noise():
    op = NoisyRandAugment(num_ops=2, magnitude=9.0, magnitude_std=0.0, fill=[0])
    assert op.magnitude == 90 and op.num_magnitude_bins == 101  # 9 of 10 = 0.9 of each op's largest change
    noisy = NoisyRandAugment(num_ops=2, magnitude=9.0, magnitude_std=0.5, fill=[0])
    image = torch.randint(0, 256, (1, 16, 16), dtype=torch.uint8)
    bins = set()
    for s in range(20):
        torch.manual_seed(s)
        noisy(image)
        bins.add(noisy.magnitude)
    assert len(bins) > 3 and all(70 <= m <= 100 for m in bins)  # N(9, 0.5) clipped to [0, 10], 4 std wide


BAD_POLICIES = [
    (dict(auto_augment="randaug"), "randaug"),
    (dict(num_ops=0), "num_ops"),
    (dict(magnitude=11), "magnitude"),
    (dict(magnitude_std=-1), "magnitude_std"),
    (dict(autoaugment_policy="mnist"), "mnist"),
    (dict(color_jitter=0.0), "color_jitter"),
    (dict(erasing_prob=1.5), "erasing_prob"),
    (dict(erasing_mode="rand"), "erasing_mode"),
]


@pytest.mark.parametrize("options,needle", BAD_POLICIES)
def test_bad_policy_options_are_config_errors(options, needle):
    with pytest.raises(ConfigError, match=needle):
        AugmentPolicy(**options)


@pytest.mark.parametrize(
    "options,needle",
    [
        (dict(mixup_alpha=-0.1), "mixup_alpha"),
        (dict(cutmix_alpha=-1), "cutmix_alpha"),
        (dict(mixup_alpha=0, cutmix_alpha=0), "mixes nothing"),
        (dict(prob=1.5), "prob"),
        (dict(switch_prob=-0.5), "switch_prob"),
    ],
)
def test_bad_mixup_options_are_config_errors(options, needle):
    with pytest.raises(ConfigError, match=needle):
        Mixup(**options)


@pytest.mark.parametrize(
    "factory,needle",
    [
        (lambda: EMA(decay=1.0), "decay"),
        (lambda: EMA(decay=0.0), "decay"),
        (lambda: EMA(update_every_n_steps=0), "update_every_n_steps"),
        (lambda: ImageClassifier(VisionTransformer(**TINY_VIT["init_args"]), layer_decay=0.0), "layer_decay"),
        (lambda: ImageClassifier(VisionTransformer(**TINY_VIT["init_args"]), layer_decay=1.5), "layer_decay"),
    ],
)
def test_bad_ema_and_layer_decay_options_are_config_errors(factory, needle):
    with pytest.raises(ConfigError, match=needle):
        factory()


def test_bad_mixup_option_on_the_command_line_exits_2_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(tiny_fit_args(tmp_path / "run", "--model.mixup.prob=1.5"))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: mixup.prob is 1.5" in err and "--model.init_args.mixup.prob" in err and "Traceback" not in err


def batch(n=8, k=10):
    torch.manual_seed(0)
    return torch.randn(n, 1, 16, 16), torch.randint(0, k, (n,))


@pytest.mark.parametrize("kind", ["mixup", "cutmix", "both"])
def test_mixing_gives_soft_targets_that_sum_to_one_with_label_smoothing_folded_in(kind):
    alphas = {"mixup": (0.8, 0.0), "cutmix": (0.0, 1.0), "both": (0.8, 1.0)}[kind]
    mixer = BatchMixer(Mixup(*alphas), num_classes=10, label_smoothing=0.1)
    x, y = batch()
    for seed in range(4):
        xm, soft = mixer(x, y, seed)
        torch.testing.assert_close(soft.sum(-1), torch.ones(8))
        assert soft.min() >= 0.01 - 1e-6  # label_smoothing / num_classes on every class
        # the mix of an image with its neighbour: weight lam on y, 1 - lam on y.roll(1) (smoothing removed)
        lam = ((soft - 0.01) / 0.9)[torch.arange(8), y]
        partner = y.roll(1)
        same = partner == y
        lam = torch.where(same, torch.full_like(lam, 0.5), lam)  # a pair of equal labels says nothing
        ratio = (xm - x.roll(1, 0)) / (x - x.roll(1, 0))  # mixup: lam everywhere; cutmix: 1 outside the box, 0 in
        if kind == "mixup":
            torch.testing.assert_close(ratio[~same].flatten(1).median(1).values, lam[~same], atol=1e-4, rtol=1e-4)
        if kind == "cutmix":
            kept = torch.isclose(xm, x).flatten(1).float().mean(1)  # the area outside the box
            torch.testing.assert_close(kept[~same], lam[~same], atol=1e-4, rtol=1e-4)
        xm2, soft2 = mixer(x, y, seed)
        assert torch.equal(xm, xm2) and torch.equal(soft, soft2)  # a function of the seed


def test_mixing_with_prob_0_only_smooths_the_labels():
    mixer = BatchMixer(Mixup(prob=0.0), num_classes=10, label_smoothing=0.1)
    x, y = batch()
    xm, soft = mixer(x, y, 3)
    assert torch.equal(xm, x)
    expected = torch.nn.functional.one_hot(y, 10).float() * 0.9 + 0.01
    torch.testing.assert_close(soft, expected)


def peak_lrs(model: ImageClassifier) -> dict[str, float]:
    """Parameter name -> its group's peak lr, from configure_optimizers without a Trainer."""
    model._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=1)
    optimizer = model.configure_optimizers()["optimizer"]
    lr_of = {id(p): g.get("initial_lr", g["lr"]) for g in optimizer.param_groups for p in g["params"]}
    return {n: lr_of[id(p)] for n, p in model.backbone.named_parameters() if p.requires_grad}


def test_layer_decay_follows_beit_and_gives_way_to_head_and_pos_embed_lr():
    vit = dict(TINY_VIT["init_args"], depth=3, num_classes=10)
    lrs = peak_lrs(ImageClassifier(VisionTransformer(**vit), lr=1.0, layer_decay=0.5))
    assert lrs["patch_embed.proj.weight"] == lrs["cls_token"] == lrs["pos_embed.pos_embed"] == 0.5**4
    assert lrs["blocks.0.attn.qkv.weight"] == 0.5**3 and lrs["blocks.2.mlp.fc2.bias"] == 0.5
    assert lrs["norm.weight"] == lrs["head.weight"] == 1.0
    lrs = peak_lrs(ImageClassifier(VisionTransformer(**vit), lr=1.0, layer_decay=0.5, head_lr=3.0, pos_embed_lr=2.0))
    assert lrs["head.weight"] == lrs["head.bias"] == 3.0 and lrs["pos_embed.pos_embed"] == 2.0  # explicit lrs win
    assert lrs["cls_token"] == 0.5**4 and lrs["blocks.1.norm1.weight"] == 0.25 and lrs["norm.weight"] == 1.0
    assert peak_lrs(ImageClassifier(VisionTransformer(**vit), lr=1.0, layer_decay=1.0)) == dict.fromkeys(lrs, 1.0)


def test_layer_ids_of_t2t_vit():
    model = T2TViT(variant="T2T-ViT-7", img_size=64, num_classes=10)
    depth, layer_id = len(model.blocks), model.layer_groups()
    ids = {layer_id[n] for n, _ in model.tokens_to_token.named_parameters(prefix="tokens_to_token")}
    assert ids == {0} and layer_id["cls_token"] == 0 and layer_id["pos_embed.pos_embed"] == 0
    assert layer_id["blocks.6.attn.qkv.weight"] == 7 and layer_id["head.weight"] == depth + 1 == 8


class NoBlocks(torch.nn.Linear):
    def reset_classifier(self, num_classes: int) -> None:
        pass


def test_layer_decay_without_declared_layers_is_refused_at_construction():
    with pytest.raises(ConfigError, match="layer_decay needs a backbone that declares its layers.*NoBlocks has none"):
        ImageClassifier(NoBlocks(2, 2), layer_decay=0.5)


EVERYTHING = [
    "--data.augment_policy.auto_augment=randaugment",
    "--data.augment_policy.color_jitter=0.4",
    "--data.augment_policy.erasing_prob=0.25",
    "--model.mixup.mixup_alpha=0.8",
    "--model.mixup.cutmix_alpha=1.0",
    "--model.layer_decay=0.75",
    "--trainer.gradient_clip_val=1.0",
    "--num_threads=1",
]


def ema_arg(**init_args) -> str:
    return "--trainer.callbacks=" + json.dumps([{"class_path": "lit_vit.callbacks.EMA", "init_args": init_args}])


def ckpt(path):
    return torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint, written by this test


def test_fit_with_every_option_on_validates_and_checkpoints_the_averaged_weights(tmp_path):
    run = tmp_path / "run"
    main(tiny_fit_args(run, *EVERYTHING, ema_arg(decay=0.8), max_epochs=2))
    best = ckpt(run / "checkpoints" / "best.ckpt")
    assert best["hyper_parameters"]["mixup"]["cutmix_alpha"] == 1.0
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["init_args"]["augment_policy"]["erasing_prob"] == 0.25  # the run's config keeps the recipe
    assert int(best["averaging_state"]["n_averaged"]) == best["global_step"]  # one update per optimiser step
    current, average = best["current_model_state"], best["state_dict"]
    assert not torch.equal(current["backbone.head.weight"], average["backbone.head.weight"])
    # the logged val/acc1 and val/loss of that epoch are those of the averaged weights, which the checkpoint holds
    model = ImageClassifier.load_from_checkpoint(run / "checkpoints" / "best.ckpt", map_location="cpu").eval()
    torch.testing.assert_close(model.state_dict()["backbone.head.weight"], average["backbone.head.weight"])
    dm = DigitsDataModule(batch_size=16)
    dm.setup("validate")
    logits, targets = [], []
    with torch.no_grad():
        for i, (x, y) in enumerate(dm.val_dataloader()):
            if i == 4:  # limit_val_batches=4
                break
            logits.append(model(x))
            targets.append(y)
    logits, targets = torch.cat(logits), torch.cat(targets)
    rows = [r for r in (run / "metrics.csv").read_text().splitlines()[1:] if r.split(",")[-1]]
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    logged = [dict(zip(header, r.split(","))) for r in rows]
    best_row = max(logged, key=lambda r: float(r["val/acc1"]))
    assert math.isclose(float(best_row["val/acc1"]), float((logits.argmax(1) == targets).float().mean()))


def test_ema_resumed_mid_epoch_equals_the_uninterrupted_run(tmp_path):
    from test_cli import callbacks_arg

    common = dict(max_epochs=2, limit_batches=8)
    ema = {"class_path": "lit_vit.callbacks.EMA", "init_args": {"decay": 0.7, "update_every_n_steps": 2}}

    def with_ema(arg: str) -> str:
        return "--trainer.callbacks=" + json.dumps([ema, *json.loads(arg.split("=", 1)[1])])

    ref, run = tmp_path / "ref", tmp_path / "run"
    args = [*EVERYTHING, "--checkpoint_every_n_steps=3"]
    main(tiny_fit_args(ref, *args, with_ema(callbacks_arg(tmp_path / "ref.jsonl")), **common))
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(tiny_fit_args(run, *args, with_ema(callbacks_arg(tmp_path / "run.jsonl", 13)), **common))
    interrupted = ckpt(run / "checkpoints" / "last.ckpt")
    assert (interrupted["epoch"], interrupted["global_step"]) == (1, 12)  # mid-epoch
    assert int(interrupted["averaging_state"]["n_averaged"]) == 6  # steps 0, 2, ..., 10 updated the average
    main(tiny_fit_args(run, *args, with_ema(callbacks_arg(tmp_path / "run.jsonl")), "--ckpt_path=last", **common))

    a, b = ckpt(ref / "checkpoints" / "last.ckpt"), ckpt(run / "checkpoints" / "last.ckpt")
    for key in ("state_dict", "current_model_state", "averaging_state"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    assert int(a["averaging_state"]["n_averaged"]) == 8
    # and the average is not the trained weights: it really is an average
    mid = ckpt(ref / "checkpoints" / "best.ckpt")
    assert not torch.equal(
        mid["state_dict"]["backbone.head.weight"], mid["current_model_state"]["backbone.head.weight"]
    )


def test_fewshot_and_other_evaluations_find_the_averaged_module_while_ema_is_on():
    from torch.optim.swa_utils import AveragedModel

    from lit_vit.callbacks.ema import averaged_module

    model = ImageClassifier(VisionTransformer(**TINY_VIT["init_args"]), num_classes=10)
    ema = EMA(decay=0.5)
    trainer = SimpleNamespace(callbacks=[ema])
    assert averaged_module(trainer, model) is model  # no average yet (outside fit)
    ema._average_model = AveragedModel(model)
    with torch.no_grad():
        model.backbone.head.weight.add_(1.0)
    found = averaged_module(trainer, model)
    assert found is ema._average_model.module
    assert not torch.equal(found.backbone.head.weight, model.backbone.head.weight)


def test_deit_embedded_recipe_runs_from_its_yaml(tmp_path):
    run = tmp_path / "run"
    main(["fit", "--config", str(REPO / "experiments/deit_embedded.yaml"), f"--trainer.default_root_dir={run}",
          "--trainer.max_steps=3", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
          "--trainer.enable_progress_bar=false"])  # fmt: skip
    last = ckpt(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 3 and int(last["averaging_state"]["n_averaged"]) == 3
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["init_args"]["mixup"]["cutmix_alpha"] == 1.0
    assert config["data"]["init_args"]["augment_policy"]["auto_augment"] == "randaugment"


@pytest.mark.parametrize(
    "path",
    ["experiments/cifar10/vit_deit.yaml", "experiments/imagenet/deit_s16.yaml", "experiments/imagenet/t2t_vit_14.yaml"],
)
def test_gpu_recipes_parse_with_every_part(path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(REPO / path), "--print_config"])
    assert exc.value.code in (0, None)
    config = yaml.safe_load(capsys.readouterr().out)
    assert config["model"]["init_args"]["mixup"]["mixup_alpha"] == 0.8
    assert config["data"]["init_args"]["augment_policy"]["erasing_prob"] == 0.25
    assert [c["class_path"] for c in config["trainer"]["callbacks"]] == ["lit_vit.callbacks.EMA"]


class SaveEveryNSteps(L.Callback):
    """A callback that is not a Lightning Checkpoint (so Lightning does not move it after EMA) and saves a checkpoint
    in on_train_batch_end, as a user's own callback might."""

    def __init__(self, path, every_n_steps: int) -> None:
        self.path, self.every_n_steps = path, every_n_steps

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            trainer.save_checkpoint(self.path)


@pytest.mark.parametrize("saver", ["run_checkpoints", "plain_callback"])
def test_a_checkpoint_saved_by_a_callback_listed_before_ema_holds_this_steps_update(tmp_path, saver):
    from _cli_callbacks import CrashAtStep

    from lit_vit.callbacks import run_checkpoints
    from lit_vit.run_folder import AtomicCheckpointIO

    L.seed_everything(0)
    model = ImageClassifier(VisionTransformer(**TINY_VIT["init_args"]))
    if saver == "run_checkpoints":  # lit_vit's own: Lightning runs Checkpoint callbacks after the others
        savers = run_checkpoints(tmp_path, "val/acc1", "max", every_n_steps=3)
    else:  # runs before EMA's on_train_batch_end: EMA makes the step's update when asked for its state
        savers = [SaveEveryNSteps(tmp_path / "last.ckpt", 3)]
    trainer = L.Trainer(
        max_steps=5, limit_val_batches=0, accelerator="cpu", logger=False, enable_progress_bar=False,
        enable_checkpointing=saver == "run_checkpoints", enable_model_summary=False, plugins=[AtomicCheckpointIO()],
        # the crash keeps the periodic checkpoint of step 3 as the last one
        callbacks=[*savers, EMA(decay=0.5), CrashAtStep(4)],
    )  # fmt: skip
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(model, DigitsDataModule(batch_size=16))
    saved = ckpt(tmp_path / "last.ckpt")
    assert saved["global_step"] == 3
    assert int(saved["averaging_state"]["n_averaged"]) == 3 and saved["callbacks"]["EMA"]["latest_update_step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # renamed into place, no .tmp left


def test_resuming_an_ema_run_without_the_ema_callback_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    main(tiny_fit_args(run, ema_arg(decay=0.8), "--num_threads=1"))
    with pytest.raises(SystemExit) as exc:
        main(tiny_fit_args(run, "--ckpt_path=last", "--num_threads=1", max_epochs=2))
    assert exc.value.code == 2
    assert "trained with an EMA callback" in capsys.readouterr().err


@pytest.mark.slow
def test_policy_augmentation_does_not_depend_on_workers_and_leaves_validation_alone():
    policy = AugmentPolicy(color_jitter=0.4, erasing_prob=0.5)

    def batches(workers, augment_policy, augment_on="auto"):
        dm = DigitsDataModule(
            num_workers=workers,
            persistent_workers=False,
            batch_size=64,
            augment_policy=augment_policy,
            augment_on=augment_on,
        )
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(2)
        return [x for x, _ in loader][:3], [x for x, _ in dm.val_dataloader()]

    # a policy forces the per-sample path; the plain pipeline is compared on the same path (the batched one
    # normalises with other float operations: equal to 1 ulp, checked below)
    (train0, val0), (train2, _) = batches(0, policy), batches(2, policy)
    (plain_train, plain_val), (_, batched_val) = batches(0, None, "sample"), batches(0, None)
    assert all(torch.equal(a, b) for a, b in zip(train0, train2))
    assert all(torch.equal(a, b) for a, b in zip(val0, plain_val))  # validation images are the plain ones
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(val0, batched_val))
    assert not torch.equal(train0[0], plain_train[0])
