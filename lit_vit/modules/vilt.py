"""ViLT LightningModules: pre-training (ITM + MLM + WPA), retrieval fine-tuning / evaluation, VQA and NLVR2 fine-tuning.

The vocabulary comes from the DataModule (a BERT vocab.txt or one trained on the captions) unless the model already
has one (a pre-trained lit_vit checkpoint, a resumed run); it is saved in every checkpoint, with the VQA answers,
so `load_from_checkpoint` rebuilds the model alone. The optimiser is the official recipe: AdamW with betas
(0.9, 0.98), linear warm-up over the first 10% of steps, then linear decay to 0.
"""

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torchmetrics import MeanMetric

from lit_vit.callbacks.table_predict import TablePredictionWriter
from lit_vit.data.image_text import ImageTextDataModule
from lit_vit.data.tokenizer import TextTokenizer, whole_word_mask
from lit_vit.errors import ConfigError
from lit_vit.lightning_compat import attached_trainer, built_by_cli
from lit_vit.models import weights
from lit_vit.models.vilt import ViLT, wpa_distance
from lit_vit.modules.optim import build_optimizer, linear_schedule, param_groups


def retrieval_recall(scores: torch.Tensor, text_image: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Recall@K of both directions from an (images x texts) score matrix; `text_image[j]` is text j's image.

    image->text: an image is a hit if ANY of its texts is among its top K (hit rate, as in the ViLT / UNITER
    evaluation); text->image: a text is a hit if its one image is among its top K.
    """
    n_img, n_txt = scores.shape
    images = torch.arange(n_img, device=scores.device)
    out = {}
    for k in ks:
        top_txt = scores.topk(min(k, n_txt), dim=1).indices  # n_img, k
        out[f"tr_r{k}"] = (text_image[top_txt] == images[:, None]).any(1).float().mean()
        top_img = scores.t().topk(min(k, n_img), dim=1).indices  # n_txt, k
        out[f"ir_r{k}"] = (top_img == text_image[:, None]).any(1).float().mean()
    out["r_mean"] = torch.stack(list(out.values())).mean()
    return out


class ViltModule(L.LightningModule):
    """Shared glue: vocabulary handling, pre-trained weights, optimiser and schedule.

    The data is an ImageTextDataModule, used only through its documented interface: the module keeps the
    vocabulary (stored in checkpoints) and hands it to the data (`use_vocab`), the data owns and builds the
    tokenizer; the module says what its evaluation needs (`set_eval_protocol(eval_protocol)`) and reads the
    retrieval grid back (`retrieval_dataset`).

    Args:
        model: the ViLT network (class_path / init_args in YAML).
        pretrained: weights to start from: a lit_vit checkpoint, a HuggingFace ViLT file (.bin / .safetensors) or an
            original ViLT .ckpt; loaded safely, keys and shapes checked.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (not on biases, norms, position table, class token).
        betas: AdamW betas.
        eps: AdamW epsilon.
        warmup_ratio: fraction of all optimiser steps spent in linear warm-up.
        head_lr_mult: learning-rate multiplier of the task heads (VQA classifier, rank head; 10 in ViLT).
    """

    monitor: tuple[str, str] = ("val/loss", "min")
    eval_protocol = "pairs"
    task_heads: tuple[str, ...] = ()
    data_task = "captions or vqa"  # ViltNLVR2: "nlvr2" (two images and a statement per example)
    # validate / test / predict may run on `pretrained` alone, without a fine-tuned checkpoint (zero-shot), when the
    # file holds trained `eval_heads` (the CLI allows it for classes that say so: lit_vit.cli.pretrained_to_evaluate)
    evaluates_pretrained = True
    eval_heads: tuple[str, ...] = ("itm_head", "mlm_head")
    prediction_writer = TablePredictionWriter  # the CLI's predict writer: prediction_table() below makes the rows

    def __init__(
        self,
        model: ViLT,
        pretrained: str | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.01,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        warmup_ratio: float = 0.1,
        head_lr_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=None if built_by_cli() else ["model"])
        if not isinstance(model, ViLT):
            raise ConfigError(f"model must be lit_vit.models.vilt.ViLT, got {type(model).__name__}")
        if not 0.0 <= warmup_ratio < 1.0:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {warmup_ratio}")
        self.model = model
        self.vocab: list[str] | None = None
        self.tokenizer: TextTokenizer | None = None
        self._pretrained_loaded = False
        self._heads_not_loaded: list[str] | None = None  # after `pretrained` is loaded: the heads it did not have
        self._restored = False  # weights restored from a Lightning checkpoint (fit / validate / test --ckpt_path)

    # --- vocabulary, weights -------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if not isinstance(dm, ImageTextDataModule):
            raise ConfigError("ViLT modules need an image-text DataModule (e.g. lit_vit.data.SceneDataModule)")
        if (dm.task == "nlvr2") != (self.data_task == "nlvr2"):
            raise ConfigError(
                f"{type(self).__name__} needs {self.data_task} data, and {type(dm).__name__} holds {dm.task} examples; "
                "use ViltNLVR2 with NLVR2 data (two images and a statement) and the other ViLT modules with the rest"
            )
        dm.set_eval_protocol(self.eval_protocol)
        if dm.max_text_len > self.model.max_text_len:
            raise ConfigError(
                f"data.max_text_len {dm.max_text_len} exceeds the model's max_text_len {self.model.max_text_len}; "
                "lower the data's or raise the model's"
            )
        sd, meta = (None, {})
        if self.hparams.pretrained and not self._pretrained_loaded:
            sd, meta = weights.read(self.hparams.pretrained)
        if self.vocab is None:
            self.vocab = meta.get("vilt_vocab")
        if self.vocab is not None:
            dm.use_vocab(self.vocab)
        else:
            self.vocab = list(dm.tokenizer.vocab)
        self.tokenizer = dm.tokenizer
        self.model.resize_vocab(len(self.vocab))
        self.setup_task(dm)
        if sd is not None:
            report = weights.load_pretrained(self.model, sd, source=str(self.hparams.pretrained))
            self._pretrained_loaded = True
            rank_zero_info(f"pretrained: {report.summary()}")
            self._heads_not_loaded = weights.heads_not_loaded(report)
            self.after_pretrained(self._heads_not_loaded)

    # a checkpoint is restored after setup: whether validate / test / predict run on its weights is known here
    def on_validation_start(self) -> None:
        self._check_evaluated_weights()

    def on_test_start(self) -> None:
        self._check_evaluated_weights()

    def on_predict_start(self) -> None:
        self._check_evaluated_weights()

    def _check_evaluated_weights(self) -> None:
        stage = self.trainer.state.fn
        if stage != "fit" and not self._restored:
            self.check_zero_shot(stage, self._heads_not_loaded)

    def check_zero_shot(self, stage: str, not_loaded: list[str] | None) -> None:
        """validate / test / predict without a checkpoint evaluate the pretrained weights as they are: refuse when
        there are none (random weights) or when they lack a head the task needs (it would be random)."""
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        if not_loaded is None:
            raise ConfigError(
                f"{stage} needs trained weights: give --ckpt_path <fine-tuned .ckpt> or --model.init_args.pretrained "
                "<weights> (evaluated as they are); this model's weights are random"
            )
        untrained = self.untrained_heads(not_loaded)
        if untrained:
            raise ConfigError(
                f"{stage} without --ckpt_path evaluates {self.hparams.pretrained} as it is, and it has no trained "
                f"{', '.join(untrained)} ({type(self).__name__} needs {', '.join(self.eval_heads)}): fine-tune it "
                "first (fit) and give that run's checkpoint with --ckpt_path"
            )
        rank_zero_info(f"{stage}: evaluating the pretrained weights {self.hparams.pretrained} (no fine-tuning)")

    def untrained_heads(self, not_loaded: list[str]) -> list[str]:
        """The heads the evaluation needs that the pretrained weights did not bring."""
        return [h for h in self.eval_heads if h in not_loaded]

    def setup_task(self, dm) -> None:
        """Task-specific heads from the data (VQA answers)."""

    def after_pretrained(self, skipped_heads: list[str]) -> None:
        """Initialise heads the pre-trained weights did not have (the retrieval rank head)."""

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vilt_vocab"] = self.vocab

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._restored = True
        vocab = checkpoint.get("vilt_vocab")
        if vocab is None:
            raise ConfigError("the checkpoint has no ViLT vocabulary (vilt_vocab); it was not written by a ViLT module")
        self.vocab = list(vocab)
        self.model.resize_vocab(len(vocab))
        dm = getattr(attached_trainer(self), "datamodule", None)  # no trainer under load_from_checkpoint
        if isinstance(dm, ImageTextDataModule):
            dm.use_vocab(self.vocab)
            self.tokenizer = dm.tokenizer

    def forward(self, batch: dict[str, torch.Tensor], text_ids: torch.Tensor | None = None) -> dict:
        ids = batch["text_ids"] if text_ids is None else text_ids
        return self.model(ids, batch["text_mask"], batch["image"], batch["pixel_mask"])

    # --- predict -------------------------------------------------------------------------------------------------
    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        out = {"bad": batch["bad"]}
        if "index" in batch:  # a batch whose every image was unreadable has only `bad`
            out |= {"index": batch["index"], **self.predict_scores(batch)}
        return out

    def predict_scores(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`score`: the ITM probability that the text describes the image."""
        return {"score": self.model.itm_logits(self(batch)).float().softmax(-1)[:, 1]}

    def prediction_table(self, predictions: list[dict], top_k: int) -> tuple[list[str], list[list], list[str]]:
        """(header, rows, unreadable image files) of the predict CSV from every batch's `predict_step` output."""
        pairs = self.trainer.datamodule.predict_pairs
        bad = [pairs[i].image for p in predictions for i in p["bad"].tolist()]
        good = [p for p in predictions if "index" in p]
        if not good:
            return self.table_header(top_k), [], bad
        merged = {k: torch.cat([p[k] for p in good]) for k in good[0] if k != "bad"}
        return self.table_header(top_k), self.table_rows(pairs, merged, top_k), bad

    def table_header(self, top_k: int) -> list[str]:
        return ["image", "text", "score", "text_rank", "image_rank"]

    def table_rows(self, pairs: list, merged: dict[str, torch.Tensor], top_k: int) -> list[list]:
        """One row a pair with its score; text_rank: the text's rank among the texts scored with the same image (1:
        best; one image and a list of texts is a ranking of the texts), image_rank: the image's among the images
        scored with the same text."""
        scores = dict(zip(merged["index"].tolist(), merged["score"].tolist()))
        by_image: dict[str, list[int]] = {}
        by_text: dict[str, list[int]] = {}
        for i in scores:
            by_image.setdefault(str(pairs[i].path), []).append(i)
            by_text.setdefault(pairs[i].text, []).append(i)
        rank = {}
        for groups, what in ((by_image, "text"), (by_text, "image")):
            for members in groups.values():
                for r, i in enumerate(sorted(members, key=lambda i: (-scores[i], i)), 1):
                    rank[i, what] = r
        order = sorted(scores, key=lambda i: (str(pairs[i].path), rank[i, "text"]))
        return [[pairs[i].image, pairs[i].text, f"{scores[i]:.6f}", rank[i, "text"], rank[i, "image"]] for i in order]

    # --- optimiser -----------------------------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        module_lrs = [(head, hp.lr * hp.head_lr_mult) for head in self.task_heads]
        groups = param_groups(
            self.model, hp.lr, hp.weight_decay, module_lrs=module_lrs, decay_first=False, every_group_lr=True
        )
        optimizer = build_optimizer(groups, "adamw", hp.lr, betas=hp.betas, eps=hp.eps)
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": optimizer, "lr_scheduler": linear_schedule(optimizer, int(hp.warmup_ratio * total), total)}


class ViltPretraining(ViltModule):
    """ViLT pre-training: image-text matching with word-patch alignment, and whole-word masked language modelling.

    Every step runs two forward passes, as the official code: masked text with the true image (MLM), and full text
    with half the images swapped for another image of the batch (ITM; the label is whether the image is the
    caption's own, WPA pulls matched pairs' word-patch transport distance down and pushes mismatched ones up).

    Args:
        model: the ViLT network.
        pretrained: weights to start from (lit_vit, HuggingFace or original ViLT checkpoint).
        mlm_prob: probability of masking a word (whole-word masking).
        itm_weight: weight of the ITM loss.
        mlm_weight: weight of the MLM loss.
        wpa_weight: weight of the word-patch alignment loss (0.1 in ViLT; 0 disables it).
        **kwargs: the optimiser and schedule options of ViltModule (lr, weight_decay, betas, eps, warmup_ratio,
            head_lr_mult).
    """

    monitor = ("val/loss", "min")

    def __init__(
        self,
        model: ViLT,
        pretrained: str | None = None,
        mlm_prob: float = 0.15,
        itm_weight: float = 1.0,
        mlm_weight: float = 1.0,
        wpa_weight: float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, pretrained=pretrained, **kwargs)
        if not 0.0 < mlm_prob < 1.0:
            raise ConfigError(f"mlm_prob must be in (0, 1), got {mlm_prob}")
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_itm_acc", MeanMetric())
            setattr(self, f"{stage}_mlm_acc", MeanMetric())

    def losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None) -> dict:
        hp, tok = self.hparams, self.tokenizer
        ids, image, pixel_mask = batch["text_ids"], batch["image"], batch["pixel_mask"]
        B = ids.shape[0]
        # MLM: masked text, true image
        masked, labels = whole_word_mask(ids, batch["word_ids"], tok.mask_id, len(self.vocab), hp.mlm_prob, generator)
        mlm_logits = self.model.mlm_logits(self(batch, masked))
        target = labels != -100
        mlm_loss = F.cross_entropy(mlm_logits[target].float(), labels[target])
        mlm_correct = (mlm_logits[target].argmax(-1) == labels[target]).float()
        # ITM: half the pairs get another image of the batch
        swap = torch.zeros(B, dtype=torch.bool, device=ids.device)
        swap[torch.randperm(B, generator=generator, device=ids.device)[: B // 2]] = True
        shift = int(torch.randint(1, max(B, 2), (1,), generator=generator, device=ids.device))
        source = torch.where(swap, (torch.arange(B, device=ids.device) + shift) % B, torch.arange(B, device=ids.device))
        itm_labels = (batch["image_index"][source] == batch["image_index"]).long()  # a swap to the same image matches
        out = self.model(ids, batch["text_mask"], image[source], pixel_mask[source])
        itm_logits = self.model.itm_logits(out)
        itm_loss = F.cross_entropy(itm_logits.float(), itm_labels)
        result = {
            "mlm_loss": mlm_loss,
            "itm_loss": itm_loss,
            "mlm_correct": mlm_correct,
            "itm_correct": (itm_logits.argmax(-1) == itm_labels).float(),
        }
        loss = hp.mlm_weight * mlm_loss + hp.itm_weight * itm_loss
        if hp.wpa_weight > 0:
            dist = wpa_distance(out)
            wpa = (dist[itm_labels == 1].sum() - dist[itm_labels == 0].sum()) / B
            result["wpa_loss"] = hp.wpa_weight * wpa
            loss = loss + result["wpa_loss"]
        result["loss"] = loss
        return result

    def _log(self, r: dict, stage: str) -> None:
        on_step = stage == "train"
        for name in ("loss", "itm_loss", "mlm_loss", "wpa_loss"):
            if name in r:
                self.log(f"{stage}/{name}", r[name], on_step=on_step, on_epoch=True, prog_bar=name == "loss")
        for name in ("itm", "mlm"):
            metric = getattr(self, f"{stage}_{name}_acc")
            metric.update(r[f"{name}_correct"])
            self.log(f"{stage}/{name}_acc", metric, on_step=False, on_epoch=True, prog_bar=stage != "train")

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        r = self.losses(batch)
        self._log(r, "train")
        return r["loss"]

    def _eval_step(self, batch: dict, batch_idx: int, stage: str) -> None:
        # fixed masks and negatives per batch: validation numbers are comparable between epochs and runs
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)
        self._log(self.losses(batch, generator), stage)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")


class ViltRetrieval(ViltModule):
    """Image-text retrieval: fine-tunes the rank head with a softmax over the caption and `num_negatives` captions of
    other images (for the same image), and evaluates image->text and text->image Recall@1/5/10 by scoring every
    (image, caption) pair of the evaluation split.

    Args:
        model: the ViLT network.
        pretrained: weights to start from (a pre-training checkpoint; the rank head starts from ITM's match row).
        num_negatives: captions of other images scored against each image in training (15 in ViLT).
        **kwargs: the optimiser and schedule options of ViltModule (lr, weight_decay, betas, eps, warmup_ratio,
            head_lr_mult).
    """

    monitor = ("val/r_mean", "max")
    eval_protocol = "retrieval"
    task_heads = ("rank_head",)
    eval_heads = ("rank_head",)

    def __init__(
        self,
        model: ViLT,
        pretrained: str | None = None,
        num_negatives: int = 15,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, pretrained=pretrained, **kwargs)
        if num_negatives < 1:
            raise ConfigError(f"num_negatives must be at least 1, got {num_negatives}")
        if self.model.rank_head is None:
            self.model.add_rank_head()
        self._scores: list[torch.Tensor] = []

    def after_pretrained(self, skipped_heads: list[str]) -> None:
        if "rank_head" in skipped_heads:
            self.model.add_rank_head()  # from the pre-trained ITM head

    def predict_scores(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`score`: the rank head's score (a logit; the ITM "match" logit for a pre-trained model)."""
        return {"score": self.model.rank_scores(self(batch)).float()}

    def untrained_heads(self, not_loaded: list[str]) -> list[str]:
        # zero-shot retrieval ranks with the ITM head's "match" row (the rank head starts as that row)
        return ["rank_head or itm_head"] if {"rank_head", "itm_head"} <= set(not_loaded) else []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        img_idx = batch["image_index"]
        B, k = img_idx.shape[0], self.hparams.num_negatives
        other = (img_idx[None, :] != img_idx[:, None]).float()  # text j may be a negative for image i
        if (other.sum(1) == 0).any():
            raise ConfigError("a training batch holds captions of a single image; raise data.batch_size")
        neg = torch.multinomial(other, k, replacement=True)  # B, k
        texts = torch.cat([torch.arange(B, device=img_idx.device)[:, None], neg], dim=1).flatten()
        rows = torch.arange(B, device=img_idx.device).repeat_interleave(1 + k)
        out = self.model(batch["text_ids"][texts], batch["text_mask"][texts], batch["image"][rows],
                         batch["pixel_mask"][rows])  # fmt: skip
        scores = self.model.rank_scores(out).float().view(B, 1 + k)
        loss = F.cross_entropy(scores, torch.zeros(B, dtype=torch.long, device=scores.device))
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/rank_acc", (scores.argmax(1) == 0).float().mean(), on_step=False, on_epoch=True)
        return loss

    def _eval_step(self, batch: dict) -> None:
        scores = self.model.rank_scores(self(batch)).float()
        self._scores.append(torch.stack([batch["image_index"].float(), batch["index"].float(), scores], dim=1))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def _eval_end(self, stage: str) -> None:
        if not self._scores:
            return
        rows = self.all_gather(torch.cat(self._scores)).reshape(-1, 3)
        self._scores = []
        grid = self.trainer.datamodule.retrieval_dataset(stage)
        text_image = grid.text_image.to(rows.device)
        matrix = torch.full((grid.num_images, len(grid.texts)), float("-inf"), device=rows.device)
        matrix[rows[:, 0].long(), rows[:, 1].long()] = rows[:, 2]
        for name, value in retrieval_recall(matrix, text_image).items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("ir_r1", "tr_r1"), rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")


class ScoredSteps:
    """The train / val / test steps of a fine-tuning task whose batch gives a loss and one score per example (VQA
    score, NLVR2 accuracy): the class implements `loss_and_scores` and names its MeanMetric attributes
    (`<stage>_<score_attr>`) and the logged metric (`<stage>/<score_name>`)."""

    score_attr: str
    score_name: str

    def loss_and_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _step(self, batch: dict, stage: str) -> torch.Tensor:
        loss, scores = self.loss_and_scores(batch)
        metric = getattr(self, f"{stage}_{self.score_attr}")
        metric.update(scores)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True)
        self.log(f"{stage}/{self.score_name}", metric, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")


class ViltVQA(ScoredSteps, ViltModule):
    """Visual question answering as multi-label classification over the answer vocabulary (ViLT's recipe).

    The loss is binary cross-entropy on the soft scores (times the number of answers, as the official code); the
    metric is the VQA score of the top answer (its soft score: 1 when at least 4 annotators gave it).

    Args:
        model: the ViLT network (its VQA head is sized from the data's answers).
        pretrained: weights to start from (a pre-training checkpoint).
        head_lr_mult: learning-rate multiplier of the VQA classifier (10 in ViLT).
        **kwargs: the other optimiser and schedule options of ViltModule (lr, weight_decay, betas, eps,
            warmup_ratio).
    """

    monitor = ("val/vqa_score", "max")
    score_attr, score_name = "score", "vqa_score"
    task_heads = ("vqa_head",)
    eval_heads = ("vqa_head",)

    def __init__(
        self,
        model: ViLT,
        pretrained: str | None = None,
        head_lr_mult: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model=model, pretrained=pretrained, head_lr_mult=head_lr_mult, **kwargs)
        self.answers: list[str] | None = None
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_score", MeanMetric())

    def setup_task(self, dm) -> None:
        if not dm.answers:
            raise ConfigError("the data has no answers; use a VQA DataModule (VQAv2DataModule, SceneDataModule vqa)")
        if self.answers is not None and self.answers != dm.answers:
            raise ConfigError("the model's answer vocabulary differs from the data's; use the data it was trained on")
        self.answers = list(dm.answers)
        if self.model.num_answers != len(self.answers):
            self.model.reset_vqa_head(len(self.answers))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["vilt_answers"] = self.answers

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self.answers = list(checkpoint["vilt_answers"])
        if self.model.num_answers != len(self.answers):
            self.model.reset_vqa_head(len(self.answers))

    def predict_scores(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`probs`: every answer's sigmoid score (VQA is multi-label: they need not sum to 1)."""
        return {"probs": self.model.vqa_logits(self(batch)).float().sigmoid()}

    def table_header(self, top_k: int) -> list[str]:
        k = min(top_k, len(self.answers))
        return ["image", "question"] + [f"{c}_{i}" for i in range(1, k + 1) for c in ("answer", "score")]

    def table_rows(self, pairs: list, merged: dict[str, torch.Tensor], top_k: int) -> list[list]:
        """The top-k answers of every question with their scores, in input order."""
        probs, labels = merged["probs"].topk(min(top_k, len(self.answers)), dim=1)
        rows = []
        for i, p, c in sorted(zip(merged["index"].tolist(), probs.tolist(), labels.tolist())):
            rows.append(
                [pairs[i].image, pairs[i].text, *(v for a, s in zip(c, p) for v in (self.answers[a], f"{s:.6f}"))]
            )
        return rows

    def loss_and_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model.vqa_logits(self(batch)).float()
        targets = batch["targets"]
        loss = F.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]
        return loss, targets.gather(1, logits.argmax(1, keepdim=True))[:, 0]


class ViltNLVR2(ScoredSteps, ViltModule):
    """NLVR2 (is the statement true of the two images?) with ViLT's "pair" method: the encoder reads the statement
    with each image, the left image's tokens with modality type 1 and the right's with type 2 (a third row, started
    from the image row); the two pooled outputs, concatenated, go to Linear(2D, 2D) - LayerNorm - GELU - Linear(2D, 2)
    trained with cross-entropy. Metric: accuracy, `val/acc` (best).

    Args:
        model: the ViLT network (the module adds the NLVR2 head and the third modality row).
        pretrained: weights to start from (a pre-training checkpoint: its 2-row modality table is extended).
        **kwargs: the optimiser and schedule options of ViltModule (lr, weight_decay, betas, eps, warmup_ratio,
            head_lr_mult: 1 in the official NLVR2 recipe).
    """

    monitor = ("val/acc", "max")
    score_attr, score_name = "acc", "acc"
    task_heads = ("nlvr2_head",)
    eval_heads = ("nlvr2_head",)
    data_task = "nlvr2"

    def __init__(self, model: ViLT, pretrained: str | None = None, **kwargs: Any) -> None:
        super().__init__(model=model, pretrained=pretrained, **kwargs)
        if self.model.nlvr2_head is None:
            self.model.add_nlvr2_head()
        for stage in ("train", "val", "test"):
            setattr(self, f"{stage}_acc", MeanMetric())

    def setup(self, stage: str) -> None:
        if stage == "predict":
            raise ConfigError(
                "predict is not available for ViltNLVR2 (its inputs are two images and a statement); evaluate with "
                "test or validate"
            )
        super().setup(stage)

    def pair_logits(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 2) false / true logits: the encoder once per image, with the statement."""
        ids, mask = batch["text_ids"], batch["text_mask"]
        left = self.model(ids, mask, batch["image"], batch["pixel_mask"], image_type=1)
        right = self.model(ids, mask, batch["image_right"], batch["pixel_mask_right"], image_type=2)
        return self.model.nlvr2_logits(left, right).float()

    def loss_and_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.pair_logits(batch)
        return F.cross_entropy(logits, batch["label"]), (logits.argmax(1) == batch["label"]).float()
