"""The shared image-text DataModule: ViLT resize, tokenizer, VQA answer vocabulary, loaders."""

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from lit_vit.data.image_text.collate import ImageTextCollate
from lit_vit.data.image_text.datasets import PairDataset, RetrievalGridDataset
from lit_vit.data.image_text.predict import PredictCollate, PredictPair, PredictPairDataset, read_predict_pairs
from lit_vit.data.image_text.sources import SplitRecords
from lit_vit.data.image_text.transform import AUGMENT_KINDS, ImageTextTransform
from lit_vit.data.sampling import ResumableDataModule
from lit_vit.data.tokenizer import TextTokenizer
from lit_vit.errors import ConfigError

EVAL_PROTOCOLS = ("pairs", "retrieval")


def vqa_score(count: int) -> float:
    """ViLT's soft score of an answer given by `count` of the 10 annotators: 0.3 per vote, 1.0 from 4 votes."""
    return min(1.0, 0.3 * count) if count < 4 else 1.0


def normalize_answer(answer: str) -> str:
    return " ".join(answer.lower().replace("\n", " ").strip().rstrip(".").split())


class ImageTextDataModule(ResumableDataModule):
    """Shared machinery: ViLT resize, padding, tokenizer, loaders. Subclasses say where images and texts come from.

    A subclass implements `records(split)` returning the split's `SplitRecords` (captions, or questions when
    `task = "vqa"`). Its constructor takes its own options (and those whose default it changes) and passes the rest
    on as `**kwargs` to this one, by keyword: its `--data.help` lists all of them, documented here.

    The ViLT modules (lit_vit.modules.vilt) use the data through these members only:
        tokenizer, max_text_len, answers: read. This DataModule owns the tokenizer and is the only side that builds
            one: from vocab_file, trained on the training texts, or from the vocabulary a model hands in.
        use_vocab(vocab): a model that brings its vocabulary (pre-trained, resumed) hands it in.
        set_eval_protocol(protocol): what the validation / test loaders yield, "pairs" (the split's pairs) or
            "retrieval" (every image x text of the split); the module sets it in its setup.
        retrieval_dataset(split): the grid of a retrieval evaluation, with the image of every text (`text_image`).

    Args:
        root: dataset root folder.
        image_size: shorter image side after resizing (384 in ViLT).
        max_image_size: cap of the longer side (default 5/3 of image_size, ViLT's 640 for 384).
        patch_size: the model's patch size: both sides are floored to a multiple of it.
        max_text_len: text tokens incl. [CLS] / [SEP]; longer texts are truncated (counted and reported once).
        vocab_file: a BERT vocab.txt (bert-base-uncased ids); default: train a WordPiece vocabulary on the
            training texts and save it as <run dir>/vocab.txt.
        vocab_size: size of a trained vocabulary (an upper bound: small corpora give fewer tokens).
        batch_size: per-device training batch size.
        eval_batch_size: per-device batch size for validation / test (default: batch_size).
        num_workers: DataLoader worker processes.
        augment: training augmentation: none or affine (small scale / shift; keeps colours and left / right).
        eval_max_images: retrieval evaluation on the first N images of the split and their texts (default: all).
        skip_corrupt_images: skip unreadable images with a warning instead of failing.
        seed: seed of the training order and the augmentations.
        predict_path: `predict` input: a CSV (columns image, text or question) or JSON file of (image, text) pairs,
            or of one image with a list of texts / one text with a list of images (lit_vit.data.image_text.predict).
    """

    task = "captions"
    min_answer_count = 1

    def __init__(
        self,
        root: str = "data",
        image_size: int = 384,
        max_image_size: int | None = None,
        patch_size: int = 32,
        max_text_len: int = 40,
        vocab_file: str | None = None,
        vocab_size: int = 8000,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 4,
        augment: str = "none",
        eval_max_images: int | None = None,
        skip_corrupt_images: bool = False,
        seed: int = 0,
        predict_path: str | None = None,
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed)
        if image_size % patch_size:
            raise ConfigError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        if augment not in AUGMENT_KINDS:
            raise ConfigError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENT_KINDS)}")
        if max_text_len < 3:
            raise ConfigError(f"max_text_len must leave room for [CLS], [SEP] and a word, got {max_text_len}")
        self.root = Path(root)
        self.image_size, self.patch_size = image_size, patch_size
        if max_image_size is not None and max_image_size < image_size:
            raise ConfigError(f"max_image_size must be >= image_size ({image_size}), got {max_image_size}")
        self.max_image_size = int(image_size * 5 / 3) if max_image_size is None else max_image_size
        self.max_text_len, self.vocab_file, self.vocab_size = max_text_len, vocab_file, vocab_size
        self.num_workers, self.augment = num_workers, augment
        self.eval_max_images, self.skip_corrupt_images = eval_max_images, skip_corrupt_images
        self.predict_path = predict_path
        self.tokenizer: TextTokenizer | None = None
        if vocab_file is not None:
            self.tokenizer = TextTokenizer.from_file(vocab_file, max_text_len)  # fails early on a missing file
        self.answers: list[str] = []
        self.eval_protocol = "pairs"
        self.datasets: dict[str, Dataset] = {}
        self._train_texts: list[str] = []
        self._reported_truncation = False

    # --- what subclasses provide ---------------------------------------------------------------------------------
    def records(self, split: str) -> SplitRecords:
        """The images and texts of one split ('train', 'val' or 'test')."""
        raise NotImplementedError

    # --- shared machinery ----------------------------------------------------------------------------------------
    def transform(self, train: bool) -> ImageTextTransform:
        return ImageTextTransform(
            self.image_size, self.max_image_size, self.patch_size, self.augment if train else "none"
        )

    # --- the interface of the ViLT modules ------------------------------------------------------------------------
    def use_vocab(self, vocab: Sequence[str]) -> None:
        """Tokenize with the model's vocabulary (a pre-trained or resumed model brings its own)."""
        if self.tokenizer is not None and self.tokenizer.vocab == list(vocab):
            return
        if self.vocab_file is not None:
            raise ConfigError(
                f"data.vocab_file {self.vocab_file} differs from the vocabulary stored with the model; "
                "leave vocab_file unset (the model brings its own) or use the model's vocab.txt"
            )
        self.tokenizer = TextTokenizer(vocab, self.max_text_len)
        self._reported_truncation = False

    def set_eval_protocol(self, protocol: str) -> None:
        """What the validation / test loaders yield: the split's (image, text) pairs, or its retrieval grid."""
        if protocol not in EVAL_PROTOCOLS:
            raise ConfigError(f"unknown eval protocol {protocol!r}; choose one of {', '.join(EVAL_PROTOCOLS)}")
        self.eval_protocol = protocol

    def retrieval_dataset(self, split: str) -> RetrievalGridDataset:
        """Every (image, caption) pair of an evaluation split's first `eval_max_images` images (built once)."""
        key = f"{split}_grid"
        if key not in self.datasets:
            rec = self.records(split)
            n = len(rec.captions) if self.eval_max_images is None else min(self.eval_max_images, len(rec.captions))
            flat = [(i, t) for i, ts in enumerate(rec.captions[:n]) for t in ts]
            self.datasets[key] = RetrievalGridDataset(
                rec.images, n, [t for _, t in flat], [i for i, _ in flat], self.transform(False)
            )
        return self.datasets[key]

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ()}[stage]
        if self.task == "vqa" and not self.answers:
            self._build_answers()
        for split in splits:
            if split not in self.datasets:
                self.datasets[split] = self._build(split)
        if stage == "predict":
            if not self.predict_path:
                raise ConfigError("predict needs inputs: pass --data.predict_path <CSV or JSON of (image, text) pairs>")
            self.datasets["predict"] = PredictPairDataset(read_predict_pairs(self.predict_path), self.transform(False))
        if self.tokenizer is None:
            self.tokenizer = TextTokenizer.train(self.vocab_texts(), self.vocab_size, self.max_text_len)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and self.vocab_file is None and trainer.is_global_zero:
            self.tokenizer.save(Path(trainer.default_root_dir) / "vocab.txt")

    def vocab_texts(self) -> list[str]:
        """The texts a vocabulary is trained on when no vocab_file is given: the training texts."""
        return self._train_texts or self._texts_of("train")

    def _texts_of(self, split: str) -> list[str]:
        rec = self.records(split)
        if self.task == "vqa":
            return [q.text for q in rec.questions]
        return [t for texts in rec.captions for t in texts]

    @staticmethod
    def _check_texts(texts: Sequence[str], what: str, where: Callable[[int], str]) -> None:
        empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
        if empty:
            raise ConfigError(
                f"{len(empty)} empty {what} ({where(empty[0])} is the first); remove them from the annotations"
            )

    def _build_answers(self) -> None:
        questions = self.records("train").questions
        counts = Counter(normalize_answer(a) for q in questions for a in q.answers)
        self.answers = sorted(a for a, c in counts.items() if c >= self.min_answer_count)
        if not self.answers:
            raise ConfigError(
                f"no answer occurs {self.min_answer_count} times in the training annotations; lower min_answer_count"
            )

    def _build(self, split: str) -> Dataset:
        train = split == "train"
        rec = self.records(split)
        if self.task == "vqa":
            self._check_texts([q.text for q in rec.questions], "questions", lambda i: f"question {i}")
            label = {a: i for i, a in enumerate(self.answers)}
            targets = []
            for q in rec.questions:
                votes = Counter(normalize_answer(a) for a in q.answers)
                targets.append([(label[a], vqa_score(c)) for a, c in votes.items() if a in label])
            pairs = [(q.image, q.text) for q in rec.questions]
            if train:
                self._train_texts = [q for _, q in pairs]
            return PairDataset(rec.images, pairs, self.transform(train), targets)
        flat = [(img, t) for img, ts in enumerate(rec.captions) for t in ts]
        self._check_texts([t for _, t in flat], "captions", lambda i: f"the caption of image {flat[i][0]}")
        if train:
            self._train_texts = [t for _, t in flat]
        return PairDataset(rec.images, flat, self.transform(train))

    def _report_truncation(self) -> None:
        if self._reported_truncation or not self._train_texts:
            return
        self._reported_truncation = True
        n = self.tokenizer.count_truncated(self._train_texts)
        if n:
            rank_zero_warn(
                f"{n} of {len(self._train_texts)} training texts are longer than max_text_len={self.max_text_len} "
                "tokens and are truncated"
            )

    def collate(self) -> ImageTextCollate:
        return ImageTextCollate(self.tokenizer, len(self.answers) if self.task == "vqa" else 0)

    def _loader_kwargs(self) -> dict:
        return dict(
            num_workers=self.num_workers,
            collate_fn=self.collate(),
            pin_memory=torch.cuda.is_available(),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        self._report_truncation()
        return self.train_loader(self.datasets["train"], **self._loader_kwargs())

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self.retrieval_dataset(split) if self.eval_protocol == "retrieval" else self.datasets[split]
        return self.eval_loader(dataset, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")

    @property
    def predict_pairs(self) -> list[PredictPair]:
        """The (image, text) inputs of `predict`, in file order (the batches' `index`)."""
        return self.datasets["predict"].pairs

    def predict_dataloader(self) -> DataLoader:
        kwargs = self._loader_kwargs() | {"collate_fn": PredictCollate(ImageTextCollate(self.tokenizer))}
        return self.eval_loader(self.datasets["predict"], **kwargs)
