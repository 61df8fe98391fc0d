"""NLVR2 (Suhr et al., 2019): is a statement true of a pair of images? The official layout, and an embedded pair task.

An example is a left and a right image and a statement about both ("The left image contains twice the number of dogs
as the right image"), labelled true or false. ViLT's "pair" method reads each image with the statement and classifies
the two pooled outputs together (lit_vit.modules.ViltNLVR2). Batches hold both images, each padded with its own pixel
mask: `image` / `pixel_mask` (left), `image_right` / `pixel_mask_right`, and `label` (1 true, 0 false).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_vit.data.image_text.collate import pad_images, text_fields
from lit_vit.data.image_text.datamodule import ImageTextDataModule
from lit_vit.data.image_text.scenes import COLORS, SHAPES, Scenes
from lit_vit.data.image_text.sources import ImageFiles, ImageSource
from lit_vit.data.image_text.transform import ImageTextTransform
from lit_vit.data.tokenizer import TextTokenizer
from lit_vit.errors import ConfigError


class PairStatement(NamedTuple):
    """One NLVR2 example: the indices of its left and right images in the split's source, the statement, the label
    (1 true, 0 false) and the official identifier (e.g. dev-850-0-0)."""

    left: int
    right: int
    text: str
    label: int
    identifier: str


@dataclass(frozen=True)
class PairRecords:
    """A split of a pair task: the image source and its examples."""

    images: ImageSource
    examples: list[PairStatement]


class PairStatementDataset(Dataset):
    """Item -> dict(image, image_right, text, label, index); None when an image is corrupt and skipped."""

    def __init__(self, records: PairRecords, transform: ImageTextTransform) -> None:
        self.images, self.examples, self.transform = records.images, records.examples, transform

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, item: int | tuple[int, int]) -> dict | None:
        index, seed = item if isinstance(item, tuple) else (item, None)
        ex = self.examples[index]
        left, right = self.images.load(ex.left), self.images.load(ex.right)
        if left is None or right is None:
            return None
        right_seed = None if seed is None else seed + 1_000_003  # the two images get different augmentations
        return {
            "image": self.transform(left, seed),
            "image_right": self.transform(right, right_seed),
            "text": ex.text,
            "label": ex.label,
            "index": index,
        }


class PairStatementCollate:
    """Pads the left and the right images separately (each with its pixel mask) and tokenizes the statements."""

    def __init__(self, tokenizer: TextTokenizer) -> None:
        self.tokenizer = tokenizer

    def __call__(self, items: list[dict | None]) -> dict[str, torch.Tensor]:
        items = [it for it in items if it is not None]
        if not items:
            raise RuntimeError("every image pair of a batch was corrupt and skipped; check the image files")
        image, pixel_mask = pad_images([it["image"] for it in items])
        image_right, pixel_mask_right = pad_images([it["image_right"] for it in items])
        return {
            "image": image,
            "pixel_mask": pixel_mask,
            "image_right": image_right,
            "pixel_mask_right": pixel_mask_right,
            **text_fields(self.tokenizer, [it["text"] for it in items]),
            "label": torch.tensor([it["label"] for it in items]),
            "index": torch.tensor([it["index"] for it in items]),
        }


class PairStatementDataModule(ImageTextDataModule):
    """Shared machinery of the pair tasks: a subclass implements `pair_records(split)`; the rest (resize, tokenizer,
    loaders) is ImageTextDataModule's."""

    task = "nlvr2"

    def pair_records(self, split: str) -> PairRecords:
        """The images and examples of one split ('train', 'val' or 'test')."""
        raise NotImplementedError

    def set_eval_protocol(self, protocol: str) -> None:
        if protocol != "pairs":
            raise ConfigError(f"a pair-statement DataModule evaluates its examples, not {protocol!r}; use ViltNLVR2")
        super().set_eval_protocol(protocol)

    def vocab_texts(self) -> list[str]:
        return [ex.text for ex in self.pair_records("train").examples]

    def _build(self, split: str) -> Dataset:
        rec = self.pair_records(split)
        if not rec.examples:
            raise ConfigError(f"the {split} split of {type(self).__name__} has no examples; check the data root")
        self._check_texts([ex.text for ex in rec.examples], "statements", lambda i: rec.examples[i].identifier)
        if split == "train":
            self._train_texts = [ex.text for ex in rec.examples]
        return PairStatementDataset(rec, self.transform(split == "train"))

    def collate(self) -> PairStatementCollate:
        return PairStatementCollate(self.tokenizer)

    def retrieval_dataset(self, split: str):
        raise ConfigError("NLVR2 data has no retrieval grid; use ViltNLVR2 with it")


# --- the official layout ------------------------------------------------------------------------------------------
NLVR2_SPLITS = {"train": "train", "val": "dev", "test": "test1"}
NLVR2_LABELS = {"True": 1, "False": 0}


def nlvr2_image_paths(root: Path, split_name: str, entry: dict) -> tuple[Path, Path]:
    """The left / right image files of an NLVR2 entry, as the NLVR2 release lays them out (and ViLT's DATA.md):
    images/train/<directory>/<pair>-img{0,1}.png for train, <split>/<pair>-img{0,1}.png for dev and test1, where
    <pair> is the identifier without its final "-N" (the sentence number: train-10108-0-0 -> train-10108-0)."""
    pair = entry["identifier"].rsplit("-", 1)[0]
    if split_name == "train":
        folder = root / "images" / "train" / str(entry["directory"])
    else:
        folder = root / split_name
    return folder / f"{pair}-img0.png", folder / f"{pair}-img1.png"


class NLVR2DataModule(PairStatementDataModule):
    """NLVR2 from the official release: {train,dev,test1}.json (JSON lines) + the image folders.

    Layout under root (see data/README.md): <annotation_dir>/{train,dev,test1}.json, one JSON object a line with
    `identifier`, `sentence`, `label` ("True" / "False") and, for train, `directory`; images/train/<directory>/
    <pair>-img0.png and -img1.png; dev/<pair>-img{0,1}.png; test1/<pair>-img{0,1}.png (<pair>: the identifier
    without its final "-N"). Validation uses dev, test uses test1 (the paper's test-P).

    Args:
        root: dataset folder (default data/nlvr2).
        annotation_dir: folder of the JSON files, relative to root (the lil-lab/nlvr clone's nlvr2/data).
    """

    def __init__(self, root: str = "data/nlvr2", annotation_dir: str = "nlvr2/data", **kwargs) -> None:
        super().__init__(root=root, eval_max_images=None, **kwargs)  # no retrieval: no eval_max_images option
        self.annotation_dir = annotation_dir
        self._cache: dict[str, PairRecords] = {}

    def pair_records(self, split: str) -> PairRecords:
        if split not in self._cache:
            name = NLVR2_SPLITS[split]
            path = self.root / self.annotation_dir / f"{name}.json"
            if not path.is_file():
                raise ConfigError(f"NLVR2 annotation file {path} does not exist; see data/README.md for the layout")
            paths: dict[Path, int] = {}
            examples = []
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    where = f"{path} line {line_no}"
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ConfigError(
                            f"{where} is not JSON ({err.msg}); the file holds one JSON object a line"
                        ) from None
                    missing = [k for k in ("identifier", "sentence", "label") if k not in entry]
                    if split == "train" and "directory" not in entry:
                        missing.append("directory")
                    if missing:
                        raise ConfigError(f"{where} has no {', '.join(missing)}; is this an NLVR2 file?")
                    label = NLVR2_LABELS.get(str(entry["label"]))
                    if label is None:
                        raise ConfigError(f"{where}: label {entry['label']!r} is not one of True, False")
                    left, right = (paths.setdefault(p, len(paths)) for p in nlvr2_image_paths(self.root, name, entry))
                    examples.append(PairStatement(left, right, entry["sentence"].strip(), label, entry["identifier"]))
            source = ImageFiles(list(paths), self.skip_corrupt_images)
            source.check_exist(str(path))
            self._cache[split] = PairRecords(source, examples)
        return self._cache[split]


# --- the embedded pair task ---------------------------------------------------------------------------------------
PAIR_CLAUSE_KINDS = ("color", "object", "shape")


class ScenePairs:
    """Statements about two generated scenes: "left there is <clause> right there is <clause>".

    The wording keeps to the words of the embedded pre-training vocabulary (SceneDataModule's captions and questions:
    "image", "has", "and" are not in it) and to its 16 text positions. A clause names, by `kinds`, a colour ("a red
    object"), a colour and shape ("a red circle") or a shape ("a square"), negated with probability `negation` ("no
    red object").
    Example k is true for even k and false for odd k (exactly balanced); a false statement has exactly one false
    clause, left or right at random, so neither image alone decides it.
    """

    def __init__(self, num: int, seed: int, kinds: Sequence[str] = PAIR_CLAUSE_KINDS, negation: float = 0.3) -> None:
        self.num, self.scenes = num, Scenes(2 * num, seed)
        self.seed, self.kinds, self.negation = seed, tuple(kinds), negation

    def _clause(self, scene: dict, true: bool, rng: np.random.Generator) -> str:
        present = list(zip(scene["colors"], scene["shapes"]))
        kind = self.kinds[rng.integers(len(self.kinds))]
        if kind == "object":
            items = [f"{c} {s}" for c, s in present]
            others = [f"{c} {s}" for c in COLORS for s in SHAPES if (c, s) not in present]
        elif kind == "color":
            items = [f"{c} object" for c, _ in present]
            others = [f"{c} object" for c in COLORS if c not in scene["colors"]]
        else:
            items = list(scene["shapes"])
            others = [s for s in SHAPES if s not in scene["shapes"]]
        negated = rng.random() < self.negation
        pool = items if true != negated else others  # "no X" is true when X is absent
        what = pool[rng.integers(len(pool))]
        return f"no {what}" if negated else f"a {what}"

    def example(self, k: int) -> PairStatement:
        rng = np.random.default_rng([self.seed, 7919, k])
        label = int(k % 2 == 0)
        wrong = -1 if label else int(rng.integers(2))  # the one false clause of a false statement
        left, right = 2 * k, 2 * k + 1
        clauses = [self._clause(self.scenes.layout(i), side != wrong, rng) for side, i in enumerate((left, right))]
        text = f"left there is {clauses[0]} right there is {clauses[1]}"
        return PairStatement(left, right, text, label, f"scenes-{self.seed}-{k}")


class SceneNLVR2DataModule(PairStatementDataModule):
    """The embedded NLVR2-style task on generated scenes (no files, no network): two scenes of two coloured shapes and
    a statement about both, true for half the examples.

    Args:
        num_train: training examples (two scenes each).
        num_val: validation examples (held out: another seed).
        num_test: test examples.
        clause_kinds: what a clause may name: color ("a red object"), object ("a red circle"), shape ("a square").
        negation: probability that a clause is negated ("no red object").
    """

    SPLIT_SEEDS = {"train": 11, "val": 12, "test": 13}

    def __init__(
        self,
        num_train: int = 4000,
        num_val: int = 400,
        num_test: int = 400,
        clause_kinds: tuple[str, ...] = PAIR_CLAUSE_KINDS,
        negation: float = 0.3,
        image_size: int = 32,
        patch_size: int = 8,
        max_text_len: int = 16,
        vocab_size: int = 200,
        batch_size: int = 64,
        num_workers: int = 0,
        **kwargs,
    ) -> None:
        # generated in memory: no files (no root) and no corrupt images (no skip_corrupt_images)
        super().__init__(
            root="", skip_corrupt_images=False, eval_max_images=None, image_size=image_size, patch_size=patch_size,
            max_text_len=max_text_len, vocab_size=vocab_size, batch_size=batch_size, num_workers=num_workers, **kwargs,
        )  # fmt: skip
        self.sizes = {"train": num_train, "val": num_val, "test": num_test}
        for split, n in self.sizes.items():
            if n < 1:
                raise ConfigError(f"num_{split} must be 1 or more, got {n}")
        unknown = [k for k in clause_kinds if k not in PAIR_CLAUSE_KINDS]
        if unknown or not clause_kinds:
            raise ConfigError(f"clause_kinds {list(clause_kinds)}: give one or more of {', '.join(PAIR_CLAUSE_KINDS)}")
        if not 0.0 <= negation < 1.0:
            raise ConfigError(f"negation must be in [0, 1), got {negation}")
        self.clause_kinds, self.negation = list(clause_kinds), negation

    def pair_records(self, split: str) -> PairRecords:
        pairs = ScenePairs(self.sizes[split], self.SPLIT_SEEDS[split], self.clause_kinds, self.negation)
        return PairRecords(pairs.scenes, [pairs.example(k) for k in range(pairs.num)])
