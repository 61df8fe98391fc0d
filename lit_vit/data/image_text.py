"""Image-text LightningDataModules for ViLT: captions (pre-training, retrieval) and visual question answering.

Sources: generated scenes of coloured shapes (the embedded default: no network, no files), COCO caption
annotations, the Karpathy split JSON (COCO / Flickr30k), VQAv2 question + annotation files. Every image is resized by
the ViLT rule (shorter side `image_size`, longer side at most 5/3 of it, both multiples of the patch size) and a
batch pads images to a common size with a pixel mask. Texts are tokenized in the collate function, so the tokenizer
can follow the model's vocabulary (a pre-trained or resumed model) after the data is set up.
"""

import json
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, Dataset

from lit_vit.data.datasets import read_image
from lit_vit.data.sampling import ResumableDataModule
from lit_vit.data.tokenizer import TextTokenizer
from lit_vit.data.transforms import A, ToTensorV2, cv2
from lit_vit.errors import BadImageError, ConfigError

AUGMENT_KINDS = ("none", "affine")
EVAL_PROTOCOLS = ("pairs", "retrieval")


def vilt_resize_shape(h: int, w: int, shorter: int, longer: int, patch: int) -> tuple[int, int]:
    """ViLT's rule: scale the shorter side to `shorter`, cap the longer at `longer`, floor both to the patch size."""
    scale = shorter / min(h, w)
    nh, nw = h * scale, w * scale
    if max(nh, nw) > longer:
        s = longer / max(nh, nw)
        nh, nw = nh * s, nw * s
    nh, nw = int(nh + 0.5) // patch * patch, int(nw + 0.5) // patch * patch
    return max(nh, patch), max(nw, patch)


class ImageTextTransform:
    """HWC uint8 -> optional augmentation (albumentations, seeded per sample) -> ViLT resize -> normalise (0.5, 0.5).

    `affine` (small scale / shift) keeps colours and left / right, which captions and answers talk about.
    """

    def __init__(self, shorter: int, longer: int, patch: int, augment: str = "none") -> None:
        if augment not in AUGMENT_KINDS:
            raise ConfigError(f"unknown augment {augment!r}; choose one of {', '.join(AUGMENT_KINDS)}")
        self.shorter, self.longer, self.patch = shorter, longer, patch
        ops = [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.05, 0.05), p=0.8)] if augment == "affine" else []
        self.augment = A.Compose(ops, seed=0)
        self.finish = A.Compose([A.Normalize(mean=(0.5,) * 3, std=(0.5,) * 3, max_pixel_value=255.0), ToTensorV2()])

    def __call__(self, image: np.ndarray, seed: int | None = None) -> torch.Tensor:
        if seed is not None:
            self.augment.set_random_seed(seed)
        image = self.augment(image=image)["image"]
        h, w = vilt_resize_shape(image.shape[0], image.shape[1], self.shorter, self.longer, self.patch)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC if h > image.shape[0] else cv2.INTER_AREA)
        return self.finish(image=image)["image"]


# --- image sources ---------------------------------------------------------------------------------------------
class ImageFiles:
    """Images read from files; a corrupt file is an error naming it, or skipped with a warning if opted in."""

    def __init__(self, paths: Sequence[str | Path], skip_corrupt: bool = False) -> None:
        self.paths = [str(p) for p in paths]
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def check_exist(self, what: str) -> None:
        missing = [p for p in self.paths if not Path(p).is_file()]
        if missing:
            raise ConfigError(
                f"{len(missing)} of {len(self.paths)} images named in {what} are missing, the first is {missing[0]}; "
                "check the data root and the image folder layout (see data/README.md)"
            )

    def load(self, index: int) -> np.ndarray | None:
        try:
            return read_image(self.paths[index], 3)
        except BadImageError as err:
            if not self.skip_corrupt:
                fix = "remove or replace the file, or set data.skip_corrupt_images: true to skip such images"
                raise BadImageError.for_file(err.path, err.reason, fix) from err
            warnings.warn(f"skipping corrupt image {self.paths[index]}", stacklevel=2)
            return None


COLORS = {
    "red": (220, 50, 40),
    "green": (40, 170, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
}
SHAPES = ("circle", "square", "triangle")
SCENE_SIZES = ((64, 64), (64, 96), (96, 64), (48, 80), (80, 48), (64, 80))
RELATIONS = {"h": ("to the left of", "to the right of"), "v": ("above", "below")}


class Scenes:
    """Deterministic scenes of two coloured shapes, with captions and questions that need the image.

    Scene `i` of a split depends only on (split seed, i). The two objects differ in colour and in shape and sit
    side by side or one above the other; colours, shapes and layout are uniform, so no text prior solves ITM, the
    masked colour / shape / relation words, or the questions.
    """

    def __init__(self, num: int, seed: int) -> None:
        self.num, self.seed = num, seed

    def __len__(self) -> int:
        return self.num

    def layout(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, index])
        h, w = SCENE_SIZES[rng.integers(len(SCENE_SIZES))]
        colors = rng.choice(list(COLORS), size=2, replace=False).tolist()
        shapes = rng.choice(SHAPES, size=2, replace=False).tolist()
        axis = "h" if rng.random() < 0.5 else "v"
        size = int(min(h, w) * rng.uniform(0.28, 0.38))
        boxes = []
        for k in range(2):  # object 0 in the first half (left / top), object 1 in the second
            if axis == "h":
                x0 = rng.integers(k * w // 2, (k + 1) * w // 2 - size + 1)
                y0 = rng.integers(0, h - size + 1)
            else:
                x0 = rng.integers(0, w - size + 1)
                y0 = rng.integers(k * h // 2, (k + 1) * h // 2 - size + 1)
            boxes.append((int(x0), int(y0), int(x0) + size, int(y0) + size))
        return dict(size=(h, w), colors=colors, shapes=shapes, axis=axis, boxes=boxes, rng=rng)

    def load(self, index: int) -> np.ndarray:
        s = self.layout(index)
        h, w = s["size"]
        img = Image.new("RGB", (w, h), (70, 70, 70))
        draw = ImageDraw.Draw(img)
        for color, shape, (x0, y0, x1, y1) in zip(s["colors"], s["shapes"], s["boxes"]):
            fill = COLORS[color]
            if shape == "circle":
                draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
            elif shape == "square":
                draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
            else:
                draw.polygon([((x0 + x1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)
        return np.asarray(img)

    def captions(self, index: int) -> list[str]:
        s = self.layout(index)
        a, b = (f"{c} {sh}" for c, sh in zip(s["colors"], s["shapes"]))
        first, second = RELATIONS[s["axis"]]
        return [f"a {a} {first} a {b}", f"a {b} {second} a {a}"]

    def questions(self, index: int) -> list[tuple[str, str]]:
        s = self.layout(index)
        rng = s["rng"]
        k = int(rng.integers(2))
        c, sh = s["colors"][k], s["shapes"][k]
        first, second = RELATIONS[s["axis"]]
        other = f"{s['colors'][1 - k]} {s['shapes'][1 - k]}"
        rel = first if k == 0 else second
        if rng.random() < 0.5:
            ask_c, ask_s, yes = c, sh, "yes"
        else:  # a colour-shape pair that is not in the scene, sharing nothing with it half the time
            present = set(zip(s["colors"], s["shapes"]))
            options = [(cc, ss) for cc in COLORS for ss in SHAPES if (cc, ss) not in present]
            ask_c, ask_s = options[rng.integers(len(options))]
            yes = "no"
        return [
            (f"what color is the {sh}?", c),
            (f"what shape is the {c} object?", sh),
            (f"what is {rel} the {other}?", f"{c} {sh}"),
            (f"is there a {ask_c} {ask_s}?", yes),
        ]


# --- what a split holds ---------------------------------------------------------------------------------------
class ImageSource(Protocol):
    """The images of a split (`ImageFiles`, `Scenes`): `load(k)` is image k as HWC uint8 RGB, None if skipped."""

    def __len__(self) -> int: ...

    def load(self, index: int) -> np.ndarray | None: ...


class Question(NamedTuple):
    """One VQA question: the index of its image in the split's source, the text, and the annotators' answers."""

    image: int
    text: str
    answers: list[str]


@dataclass(frozen=True)
class SplitRecords:
    """What `ImageTextDataModule.records(split)` returns: the split's images and their texts.

    Attributes:
        images: the image source.
        captions: caption tasks: `captions[k]` are the captions of image k.
        questions: VQA: every question of the split, in file order.
    """

    images: ImageSource
    captions: list[list[str]] = field(default_factory=list)
    questions: list[Question] = field(default_factory=list)


# --- datasets --------------------------------------------------------------------------------------------------
class PairDataset(Dataset):
    """(image, text) pairs: item -> dict(image, text, image_index[, targets]); None when a corrupt image is skipped.

    `targets` (VQA) is a list of (answer label, soft score).
    """

    def __init__(
        self,
        images: ImageSource,
        pairs: Sequence[tuple[int, str]],
        transform: ImageTextTransform,
        targets: Sequence[list[tuple[int, float]]] | None = None,
    ) -> None:
        self.images, self.pairs, self.transform, self.targets = images, list(pairs), transform, targets

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        image_index, text = self.pairs[index]
        image = self.images.load(image_index)
        if image is None:
            return None
        out = {"image": self.transform(image, seed), "text": text, "image_index": image_index, "index": index}
        if self.targets is not None:
            out["targets"] = self.targets[index]
        return out


class RetrievalGridDataset(Dataset):
    """Every (image, text) combination of the first `num_images` images of an evaluation split, image-major: item
    k = (k // T, k % T).

    `text_image[j]` is the image (a grid row) that text j describes.
    """

    def __init__(
        self,
        images: ImageSource,
        num_images: int,
        texts: Sequence[str],
        text_image: Sequence[int],
        transform: ImageTextTransform,
    ) -> None:
        self.images, self.transform = images, transform
        self.num_images, self.texts = num_images, list(texts)
        self.text_image = torch.tensor(list(text_image))  # text j describes image text_image[j] (a grid row)
        self._cache: tuple[int, torch.Tensor] | None = None

    def __len__(self) -> int:
        return self.num_images * len(self.texts)

    def __getitem__(self, k: int) -> dict:
        i, j = divmod(k, len(self.texts))
        if self._cache is None or self._cache[0] != i:  # consecutive items share the image: decode it once
            image = self.images.load(i)
            if image is None:
                raise ConfigError(f"evaluation image {i} is corrupt; retrieval needs every image")
            self._cache = (i, self.transform(image))
        return {"image": self._cache[1], "text": self.texts[j], "image_index": i, "index": j}


class ImageTextCollate:
    """Pads images to the largest height / width of the batch (pixel mask 1 on real pixels) and tokenizes texts."""

    def __init__(self, tokenizer: TextTokenizer | None, num_answers: int = 0) -> None:
        self.tokenizer, self.num_answers = tokenizer, num_answers

    def __call__(self, items: list[dict | None]) -> dict[str, torch.Tensor]:
        items = [it for it in items if it is not None]
        if not items:
            raise RuntimeError("every image of a batch was corrupt and skipped; check the image files")
        H = max(it["image"].shape[1] for it in items)
        W = max(it["image"].shape[2] for it in items)
        image = torch.zeros(len(items), 3, H, W)
        pixel_mask = torch.zeros(len(items), H, W, dtype=torch.long)
        for b, it in enumerate(items):
            _, h, w = it["image"].shape
            image[b, :, :h, :w] = it["image"]
            pixel_mask[b, :h, :w] = 1
        text = self.tokenizer([it["text"] for it in items])
        batch = {
            "image": image,
            "pixel_mask": pixel_mask,
            "text_ids": text.ids,
            "text_mask": text.mask,
            "word_ids": text.word_ids,
            "image_index": torch.tensor([it["image_index"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }
        if self.num_answers:
            targets = torch.zeros(len(items), self.num_answers)
            for b, it in enumerate(items):
                for label, score in it["targets"]:
                    targets[b, label] = score
            batch["targets"] = targets
        return batch


# --- VQA answers -----------------------------------------------------------------------------------------------
def vqa_score(count: int) -> float:
    """ViLT's soft score of an answer given by `count` of the 10 annotators: 0.3 per vote, 1.0 from 4 votes."""
    return min(1.0, 0.3 * count) if count < 4 else 1.0


def normalize_answer(answer: str) -> str:
    return " ".join(answer.lower().replace("\n", " ").strip().rstrip(".").split())


# --- the DataModules -------------------------------------------------------------------------------------------
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


class SceneDataModule(ImageTextDataModule):
    """The embedded default: generated scenes of two coloured shapes with captions or questions (no files).

    Captions name both objects' colours and shapes and their spatial relation ("a red circle to the left of a blue
    square"), two per scene; in `vqa` mode every scene has four questions (colour, shape, relation, yes / no). The
    scenes themselves are fixed (a seed per split); `seed` sets the training order and the augmentations.

    Args:
        task: captions (pre-training, retrieval) or vqa.
        num_train: training scenes.
        num_val: validation scenes (held out: another seed).
        num_test: test scenes.
    """

    SPLIT_SEEDS = {"train": 1, "val": 2, "test": 3}

    def __init__(
        self,
        task: str = "captions",
        num_train: int = 4000,
        num_val: int = 200,
        num_test: int = 200,
        image_size: int = 32,
        patch_size: int = 8,
        max_text_len: int = 16,
        vocab_size: int = 200,
        batch_size: int = 64,
        num_workers: int = 0,
        **kwargs,
    ) -> None:
        if task not in ("captions", "vqa"):
            raise ConfigError(f"unknown task {task!r}; choose captions or vqa")
        # generated in memory: no files (no root) and no corrupt images (no skip_corrupt_images)
        super().__init__(
            root="", skip_corrupt_images=False, image_size=image_size, patch_size=patch_size,
            max_text_len=max_text_len, vocab_size=vocab_size, batch_size=batch_size, num_workers=num_workers, **kwargs,
        )  # fmt: skip
        self.task = task
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}

    def vocab_texts(self) -> list[str]:
        """Captions and questions of the training scenes: pre-training, retrieval and VQA share one vocabulary."""
        scenes = Scenes(self.sizes["train"], self.SPLIT_SEEDS["train"])
        return [t for i in range(len(scenes)) for t in [*scenes.captions(i), *(q for q, _ in scenes.questions(i))]]

    def records(self, split: str) -> SplitRecords:
        scenes = Scenes(self.sizes[split], self.SPLIT_SEEDS[split])
        if self.task == "vqa":
            # ten agreeing "annotators", as in VQAv2: the true answer scores 1.0
            questions = [Question(i, q, [a] * 10) for i in range(len(scenes)) for q, a in scenes.questions(i)]
            return SplitRecords(scenes, questions=questions)
        return SplitRecords(scenes, captions=[scenes.captions(i) for i in range(len(scenes))])


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist; see data/README.md for the expected layout")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class CocoCaptionsDataModule(ImageTextDataModule):
    """COCO captions: annotations/captions_{train,val}2017.json + the train2017 / val2017 image folders.

    Validation and test both use the val annotations (COCO has no public test captions).

    Args:
        root: folder holding annotations/ and the image folders (default data/coco).
        year: annotation year (2017 or 2014).
    """

    def __init__(self, root: str = "data/coco", year: int = 2017, **kwargs) -> None:
        super().__init__(root=root, **kwargs)
        self.year = year
        self._cache: dict[str, SplitRecords] = {}

    def records(self, split: str) -> SplitRecords:
        part = "train" if split == "train" else "val"
        if part not in self._cache:
            path = self.root / "annotations" / f"captions_{part}{self.year}.json"
            data = _read_json(path, "COCO caption file")
            images = sorted(data["images"], key=lambda im: im["id"])
            position = {im["id"]: i for i, im in enumerate(images)}
            texts: list[list[str]] = [[] for _ in images]
            for ann in data["annotations"]:
                if ann["image_id"] not in position:
                    raise ConfigError(f"{path}: caption {ann.get('id')} points to unknown image_id {ann['image_id']}")
                texts[position[ann["image_id"]]].append(ann["caption"].strip())
            folder = self.root / f"{part}{self.year}"
            source = ImageFiles([folder / im["file_name"] for im in images], self.skip_corrupt_images)
            source.check_exist(str(path))
            self._cache[part] = SplitRecords(source, captions=texts)
        return self._cache[part]


class KarpathyDataModule(ImageTextDataModule):
    """The Karpathy split JSON (dataset_coco.json / dataset_flickr30k.json): training uses train + restval.

    Image paths are <root>/<filepath>/<filename> for COCO and <root>/<image_dir>/<filename> for Flickr30k, whose
    entries have no filepath. The papers evaluate retrieval on 1,000 (Flickr30k, COCO 1K) or 5,000 (COCO 5K) test
    images: `eval_max_images`.

    Args:
        root: dataset folder (data/coco or data/flickr30k).
        split_file: the Karpathy JSON, relative to root.
        image_dir: folder of the images for entries without a filepath (Flickr30k), relative to root.
    """

    SPLITS = {"train": ("train", "restval"), "val": ("val",), "test": ("test",)}

    def __init__(
        self,
        root: str = "data/flickr30k",
        split_file: str = "dataset_flickr30k.json",
        image_dir: str = "flickr30k-images",
        **kwargs,
    ) -> None:
        super().__init__(root=root, **kwargs)
        self.split_file, self.image_dir = split_file, image_dir
        self._data: dict | None = None
        self._cache: dict[str, SplitRecords] = {}

    def records(self, split: str) -> SplitRecords:
        if split not in self._cache:
            if self._data is None:
                self._data = _read_json(self.root / self.split_file, "Karpathy split file")
            entries = [im for im in self._data["images"] if im["split"] in self.SPLITS[split]]
            if not entries:
                raise ConfigError(f"{self.root / self.split_file} has no images in split(s) {self.SPLITS[split]}")
            paths = [self.root / im.get("filepath", self.image_dir) / im["filename"] for im in entries]
            source = ImageFiles(paths, self.skip_corrupt_images)
            source.check_exist(str(self.root / self.split_file))
            texts = [[s["raw"].strip() for s in im["sentences"]] for im in entries]
            self._cache[split] = SplitRecords(source, captions=texts)
        return self._cache[split]


class VQAv2DataModule(ImageTextDataModule):
    """VQAv2: question and annotation JSON files with the COCO 2014 images.

    Layout under root: v2_OpenEnded_mscoco_{train,val}2014_questions.json, v2_mscoco_{train,val}2014_annotations.json,
    train2014/COCO_train2014_<12-digit id>.jpg, val2014/COCO_val2014_<12-digit id>.jpg. The answer vocabulary is every
    normalised answer given at least `min_answer_count` times in training (ViLT: 9, giving 3,129 answers); targets
    are soft scores (0.3 per annotator, 1.0 from four). Validation and test use the val files.

    Args:
        root: dataset folder (default data/vqav2).
        min_answer_count: minimum number of training votes for an answer to become a class.
    """

    task = "vqa"

    def __init__(self, root: str = "data/vqav2", min_answer_count: int = 9, **kwargs) -> None:
        super().__init__(root=root, eval_max_images=None, **kwargs)  # no retrieval: no eval_max_images option
        self.min_answer_count = min_answer_count
        self._cache: dict[str, SplitRecords] = {}

    def records(self, split: str) -> SplitRecords:
        part = "train" if split == "train" else "val"
        if part not in self._cache:
            qpath = self.root / f"v2_OpenEnded_mscoco_{part}2014_questions.json"
            apath = self.root / f"v2_mscoco_{part}2014_annotations.json"
            questions = _read_json(qpath, "VQAv2 question file")["questions"]
            annotations = {a["question_id"]: a for a in _read_json(apath, "VQAv2 annotation file")["annotations"]}
            image_ids = sorted({q["image_id"] for q in questions})
            position = {img: i for i, img in enumerate(image_ids)}
            records = []
            for q in questions:
                ann = annotations.get(q["question_id"])
                if ann is None:
                    raise ConfigError(f"{apath} has no annotation for question_id {q['question_id']} of {qpath}")
                records.append(Question(position[q["image_id"]], q["question"], [a["answer"] for a in ann["answers"]]))
            folder = self.root / f"{part}2014"
            paths = [folder / f"COCO_{part}2014_{img:012d}.jpg" for img in image_ids]
            source = ImageFiles(paths, self.skip_corrupt_images)
            source.check_exist(str(qpath))
            self._cache[part] = SplitRecords(source, questions=records)
        return self._cache[part]
