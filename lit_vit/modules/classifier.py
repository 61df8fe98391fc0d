"""ImageClassifier: thin Lightning glue around any backbone (loss, metrics, optimiser, schedule)."""

import os
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lit_vit.data.protocols import ClassificationData, missing_members, require
from lit_vit.errors import ConfigError
from lit_vit.lightning_compat import attached_trainer, built_by_cli
from lit_vit.models import weights
from lit_vit.modules.mixing import BatchMixer, Mixup, as_mixup, step_seed
from lit_vit.modules.optim import build_optimizer, cosine_schedule, layer_ids, param_groups

# Backbone options that are the architecture: weights trained with other values cannot be loaded (img_size and the
# head may change when fine-tuning; regularisation is not part of the weights).
ARCHITECTURE_KEYS = ("embed_dim", "depth", "num_heads", "patch_size", "mlp_ratio", "in_chans", "pos_embed", "pool",
                     "class_token", "qkv_bias", "layers", "tokens_type", "variant")  # fmt: skip


def _describe_backbone(config: Any) -> tuple[str, dict[str, Any]]:
    if hasattr(config, "as_dict"):
        config = config.as_dict()
    config = dict(config or {})
    name = str(config.get("class_path", "?")).rsplit(".", 1)[-1]
    return name, {k: v for k, v in dict(config.get("init_args") or {}).items() if k in ARCHITECTURE_KEYS}


def architecture_difference(pretrained: str, backbone: Any) -> tuple[str, str] | None:
    """(the checkpoint's architecture, this model's) when `pretrained` is a lit_vit checkpoint whose backbone differs
    from `backbone` (the module's backbone config) in an ARCHITECTURE_KEYS option or class; else None."""
    try:
        hparams = weights.read(pretrained)[1].get("hyper_parameters") or {}
    except ConfigError:
        return None
    if not isinstance(hparams, dict) or not hparams.get("backbone"):
        return None
    (theirs, t), (mine, m) = _describe_backbone(hparams["backbone"]), _describe_backbone(backbone)
    differ = sorted(k for k in set(t) & set(m) if t[k] != m[k])
    if theirs == mine and not differ:
        return None
    keys = differ or sorted(set(t) & set(m))
    return (
        f"{theirs}({', '.join(f'{k}={t[k]!r}' for k in keys)})",
        f"{mine}({', '.join(f'{k}={m[k]!r}' for k in keys)})",
    )


class ImageClassifier(L.LightningModule):
    """Image classification with an injected backbone (ViT, T2T-ViT, ...).

    The number of classes and class names come from the DataModule at setup and are saved in the checkpoint, so
    `ImageClassifier.load_from_checkpoint(path)` rebuilds the trained model on its own.

    Args:
        backbone: the network (class_path / init_args in YAML); it must have `reset_classifier(num_classes)`.
        num_classes: number of classes (default: taken from the DataModule).
        class_names: class names (default: taken from the DataModule).
        lr: peak learning rate of AdamW.
        weight_decay: decoupled weight decay (not applied to biases, norms, position embeddings, class token).
        betas: AdamW betas.
        warmup_epochs: linear warm-up length in epochs (fractions allowed).
        warmup_steps: linear warm-up length in optimiser steps (instead of warmup_epochs; giving both is an error).
        min_lr_ratio: final learning rate of the cosine decay as a fraction of lr.
        label_smoothing: label smoothing of the cross-entropy.
        pretrained: weights file to fine-tune from (timm / torchvision / official / lit_vit layouts, read safely);
            loaded into the backbone when a fit starts from scratch (not on resume), the head stays new; position
            embeddings of every kind saved at another image size are resampled to the backbone's img_size.
        head_init: default (the backbone's own init) or zero: the ViT paper's fine-tuning head, weights and bias
            zeroed when a fit starts from scratch (not on resume).
        compile: torch.compile the backbone's forward (in place, so checkpoint keys stay the same); the first steps
            are slow while it compiles.
        optimizer: adamw, or sgd (with momentum, e.g. the official T2T-ViT transfer recipe).
        momentum: SGD momentum.
        head_lr: peak learning rate of the head (`backbone.head`) when it differs from lr (fine-tuning a pre-trained
            backbone with a fresh head); follows the same warm-up and cosine schedule.
        pos_embed_lr: peak learning rate of the learned position parameters (`backbone.pos_embed`: absolute tables or
            the relative bias table) when it differs from lr; same schedule.
        mixup: Mixup / CutMix on the training batch (see lit_vit.modules.mixing.Mixup), or null (none); the loss then
            takes soft targets (label_smoothing folded in) and train/acc1 counts the dominant label of each mix.
        layer_decay: layer-wise lr decay for fine-tuning (BEiT / MAE, e.g. 0.65-0.75): a parameter of layer l gets
            lr * layer_decay ** (depth + 1 - l), with the embeddings layer 0, block i layer i + 1 and the final norm
            and head layer depth + 1. head_lr / pos_embed_lr, when set, are the lr of those parameters as given (they
            take precedence over the decay). null: off.
    """

    # The metric best.ckpt keeps the best of, and whether higher is better ("max") or lower ("min"): the CLI's
    # checkpoint callbacks read it; every lit_vit LightningModule declares one.
    monitor: tuple[str, str] = ("val/acc1", "max")

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        class_names: list[str] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 0.0,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        label_smoothing: float = 0.1,
        pretrained: str | None = None,
        head_init: str = "default",
        compile: bool = False,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        head_lr: float | None = None,
        pos_embed_lr: float | None = None,
        mixup: Mixup | None = None,
        layer_decay: float | None = None,
    ) -> None:
        super().__init__()
        # Under LightningCLI the backbone's class_path / init_args are saved, so the checkpoint alone rebuilds the
        # model; a backbone built in Python is an object and is passed again to load_from_checkpoint(backbone=...).
        self.save_hyperparameters(ignore=None if built_by_cli() else ["backbone"])
        if not hasattr(backbone, "reset_classifier"):
            raise ConfigError(f"backbone {type(backbone).__name__} has no reset_classifier(num_classes) method")
        if head_init not in ("default", "zero"):
            raise ConfigError(
                f"unknown head_init {head_init!r}; choose default or zero (the paper's zero-initialised fine-tuning "
                "head), e.g. --model.init_args.head_init=zero"
            )
        for name, value in (("lr", lr), ("head_lr", head_lr), ("pos_embed_lr", pos_embed_lr)):
            if value is not None and not value >= 0:
                raise ConfigError(
                    f"{name} must be a learning rate >= 0, got {value}; e.g. --model.init_args.{name}=1e-3"
                )
        if layer_decay is not None and not 0 < layer_decay <= 1:
            raise ConfigError(
                f"layer_decay must be in (0, 1] (1: no decay; BEiT / MAE fine-tuning 0.65-0.75), got {layer_decay}; "
                "set --model.init_args.layer_decay or null"
            )
        if layer_decay is not None:
            layer_ids(backbone)  # a backbone that declares no layers fails here, before training
        mixup = as_mixup(mixup)  # a dict when read back from a checkpoint's hyperparameters
        self.hparams["mixup"] = None if mixup is None else asdict(mixup)
        self.mixer: BatchMixer | None = None
        if warmup_steps < 0 or warmup_epochs < 0:
            raise ConfigError(f"warm-up must be >= 0, got warmup_steps {warmup_steps}, warmup_epochs {warmup_epochs}")
        if warmup_steps > 0 and warmup_epochs > 0:
            raise ConfigError(
                f"give the warm-up once: warmup_steps {warmup_steps} or warmup_epochs {warmup_epochs}, not both"
            )
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ConfigError(
                f"min_lr_ratio must be in [0, 1] (the final lr as a fraction of the peak), got {min_lr_ratio}; "
                "e.g. 0.01, or 0 to decay to zero"
            )
        if optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"unknown optimizer {optimizer!r}; choose adamw or sgd")
        for name, value, part in (("head_lr", head_lr, "head"), ("pos_embed_lr", pos_embed_lr, "pos_embed")):
            if value is not None and not isinstance(getattr(backbone, part, None), nn.Module):
                raise ConfigError(f"{name} needs a backbone with a `{part}` module; {type(backbone).__name__} has none")
        self.backbone = backbone
        if compile:
            self.backbone.compile()  # compiles __call__ in place: no `_orig_mod.` wrapper in the state dict
        if num_classes is not None:
            self._set_classes(num_classes, class_names)

    def _set_classes(self, num_classes: int, class_names: list[str] | None) -> None:
        if class_names is not None and len(class_names) != num_classes:
            raise ConfigError(f"{len(class_names)} class names given for num_classes={num_classes}")
        if getattr(self.backbone, "num_classes", None) != num_classes:
            self.backbone.reset_classifier(num_classes)
        self.hparams["num_classes"], self.hparams["class_names"] = num_classes, class_names
        if self.hparams.get("mixup") is not None:
            self.mixer = BatchMixer(Mixup(**self.hparams.mixup), num_classes, self.hparams.label_smoothing)
        k5 = min(5, num_classes)
        self.train_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.val_acc5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")
        self.test_acc1 = MulticlassAccuracy(num_classes, top_k=1, average="micro")
        self.test_acc5 = MulticlassAccuracy(num_classes, top_k=k5, average="micro")

    def setup(self, stage: str) -> None:
        # the seed of the batch mixing: seed_everything's, which a resumed run sets again
        self._mix_seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed()))
        dm = getattr(self.trainer, "datamodule", None)
        foreign = dm is None or "num_classes" in missing_members(dm, ClassificationData)
        if foreign and self.hparams.get("num_classes") is not None:
            return  # no classes from the data: model.num_classes states them, nothing to check the backbone against
        if dm is None:
            raise ConfigError("num_classes is unknown: use a DataModule that provides it or set model.num_classes")
        require(dm, ClassificationData, "ImageClassifier")
        self._check_input(dm)
        if stage == "predict" and self.hparams.get("num_classes") is not None:
            return  # predicting on new files: the classes are the trained model's
        n, names = dm.num_classes, dm.class_names
        if self.hparams.get("num_classes") not in (None, n):
            raise ConfigError(
                f"model.num_classes is {self.hparams['num_classes']} but the data has {n} classes; "
                "remove model.num_classes (it is taken from the data) or use matching data"
            )
        if self.hparams.get("num_classes") is None or self.hparams.get("class_names") is None:
            self._set_classes(n, list(names))
        if stage == "fit" and self.hparams.pretrained and self.trainer.ckpt_path is None:
            try:
                report = weights.load_pretrained(self.backbone, self.hparams.pretrained)
            except (ConfigError, RuntimeError) as err:
                other = architecture_difference(self.hparams.pretrained, self.hparams.backbone)
                if other is None:
                    raise
                raise ConfigError(
                    f"--model.init_args.pretrained {self.hparams.pretrained} was trained as {other[0]} and this model "
                    f"is {other[1]}: its weights do not fit. Build the backbone as in the checkpoint (its run's "
                    "config.yaml), changing only img_size / num_classes / regularisation for fine-tuning"
                ) from err
            new_head = report.skipped_head or any(k.startswith("head.") for k in report.missing)
            rank_zero_info(
                f"pretrained: {report.summary()}"
                + (f" (the head is new: {self.hparams.num_classes} classes)" if new_head else "")
            )
        if stage == "fit" and self.hparams.get("head_init") == "zero" and self.trainer.ckpt_path is None:
            self.backbone.reset_classifier(self.hparams.num_classes, zero_init=True)

    def _check_input(self, dm) -> None:
        embed = getattr(self.backbone, "patch_embed", None)
        conv = getattr(embed, "proj", None)
        # a backbone whose first layer is not the patch Conv2d (T2T-ViT's unfolding, a hybrid's ResNet) states its
        # input channels as `in_chans`
        in_chans = getattr(self.backbone, "in_chans", None)
        if in_chans is None and isinstance(conv, nn.Conv2d):
            in_chans = conv.in_channels
        if in_chans is not None and in_chans != dm.in_chans:
            raise ConfigError(
                f"the data gives {dm.in_chans}-channel images but the backbone has in_chans={in_chans}; "
                f"set model.init_args.backbone.init_args.in_chans: {dm.in_chans}"
            )
        size = getattr(self.backbone, "img_size", None)
        if size is not None and tuple(size) != tuple(dm.img_size):
            raise ConfigError(
                f"the data gives {dm.img_size[0]}x{dm.img_size[1]} images but the backbone was built for "
                f"{size[0]}x{size[1]}; set model.init_args.backbone.init_args.img_size to {list(dm.img_size)} "
                "(position embeddings are resampled when loading weights of another size)"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # An EMA checkpoint's state_dict is the average; only the EMA callback puts the trained weights back, so a fit
        # resumed without it would silently continue from the average.
        trainer = attached_trainer(self)  # None under load_from_checkpoint
        resuming = trainer is not None and trainer.state.fn == "fit"
        if resuming and "current_model_state" in checkpoint:
            if not any(isinstance(cb, WeightAveraging) for cb in trainer.callbacks):
                raise ConfigError(
                    "the checkpoint was trained with an EMA callback (its state_dict is the averaged weights) but this "
                    "fit has none; resume with the same trainer.callbacks (e.g. the run's config.yaml), or start a "
                    "new run from its weights with --model.init_args.pretrained <checkpoint>"
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.mixer is not None:
            x, soft = self.mixer(x, y, step_seed(self._mix_seed, self.global_step, self.global_rank))
            logits = self(x)
            loss = F.cross_entropy(logits, soft)  # soft targets: label smoothing is already in them
            self.train_acc1(logits, soft.argmax(dim=-1))  # against the dominant label of each mixed image
        else:
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
            self.train_acc1(logits, y)
        # no prog_bar: Lightning turns every progress-bar value into a Python number each step (a host-device sync)
        self.log("train/loss", loss)
        self.log("train/acc1", self.train_acc1, on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        logits = self(x)
        self.log(f"{stage}/loss", F.cross_entropy(logits, y), sync_dist=True)
        acc1, acc5 = getattr(self, f"{stage}_acc1"), getattr(self, f"{stage}_acc5")
        acc1(logits, y)
        acc5(logits, y)
        self.log(f"{stage}/acc1", acc1, prog_bar=True)
        self.log(f"{stage}/acc5", acc5)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        x, index = batch
        return {"index": index, "probs": self(x).float().softmax(dim=-1)}

    def configure_optimizers(self):
        hp = self.hparams
        # fused: one kernel for all parameters (on CPU ~5x faster than foreach). Lightning refuses gradient clipping
        # with an optimizer that unscales gradients itself (fused ones) under mixed precision, bf16 included (no
        # scaler there, but the check does not ask), so those runs take the foreach kernel instead
        trainer = self.trainer
        clipped_mixed = "mixed" in str(getattr(trainer, "precision", "")) and bool(
            getattr(trainer, "gradient_clip_val", 0)
        )
        fused = self.device.type in ("cuda", "cpu") and not clipped_mixed
        # head_lr / pos_embed_lr take precedence over the layer decay
        module_lrs = [(m, hp.get(f"{m}_lr")) for m in ("head", "pos_embed") if hp.get(f"{m}_lr") is not None]
        groups = param_groups(
            self.backbone, hp.lr, hp.weight_decay, layer_decay=hp.get("layer_decay"), module_lrs=module_lrs
        )
        optimizer = build_optimizer(
            groups, hp.get("optimizer", "adamw"), hp.lr, betas=hp.betas, momentum=hp.get("momentum", 0.9), fused=fused
        )
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = hp.warmup_steps or int(round(hp.warmup_epochs * steps_per_epoch))
        return {"optimizer": optimizer, "lr_scheduler": cosine_schedule(optimizer, warmup, total, hp.min_lr_ratio)}
