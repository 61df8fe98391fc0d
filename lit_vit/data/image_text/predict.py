"""`predict` inputs of the ViLT modules: (image, text) rows from a CSV or JSON file.

CSV: a header with `image` and `text` (or `question`) columns, one pair a row. JSON: a list of objects (or one
object) with `image` and `text` / `question`; an object may also give one image and a list of texts
({"image": ..., "texts": [...]}) or one text and a list of images ({"text": ..., "images": [...]}): a ranking. Image
paths are relative to the input file's folder unless absolute. A file that is missing or cannot be decoded does not
stop the run: its rows are marked bad, every good row is predicted, and the bad files are listed at the end.
"""

import csv
import json
from pathlib import Path
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from lit_vit.data.datasets import read_image
from lit_vit.data.image_text.collate import ImageTextCollate
from lit_vit.data.image_text.transform import ImageTextTransform
from lit_vit.errors import BadImageError, ConfigError

TEXT_COLUMNS = ("text", "question")


class PredictPair(NamedTuple):
    """One predict input: the image file (as written in the input, and resolved) and the text."""

    image: str
    path: Path
    text: str


def _text_of(entry: dict, where: str) -> str | None:
    for key in TEXT_COLUMNS:
        if key in entry:
            text = entry[key]
            if not isinstance(text, str) or not text.strip():
                raise ConfigError(f"{where}: empty {key}; give every row a non-empty {key}")
            return text.strip()
    return None


def read_predict_pairs(path: str | Path) -> list[PredictPair]:
    """The (image, text) pairs of a predict input file (see the module docstring), checked: a one-line ConfigError
    names the file, the row and the fix for a missing file, an unknown format, missing columns or an empty text."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"predict_path {path} does not exist; give a CSV or JSON file of (image, text) pairs")
    folder = path.parent
    entries: list[tuple[str, dict]] = []
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "image" not in columns or not any(c in columns for c in TEXT_COLUMNS):
                raise ConfigError(
                    f"predict_path {path} has columns {columns}; it needs a header with image and text (or question)"
                )
            entries = [(f"{path} row {i}", row) for i, row in enumerate(reader, 2)]
    elif path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ConfigError(f"predict_path {path} is not JSON ({err.msg} at line {err.lineno})") from None
        data = [data] if isinstance(data, dict) else data
        if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
            raise ConfigError(f"predict_path {path} must hold an object or a list of objects with image and text")
        entries = [(f"{path} entry {i}", d) for i, d in enumerate(data)]
    else:
        raise ConfigError(f"predict_path {path}: unknown format {path.suffix!r}; give a .csv or .json file")
    pairs = []
    for where, entry in entries:
        images = entry.get("images", [entry.get("image")] if "image" in entry else [])
        texts = entry.get("texts")
        texts = [_text_of({"text": t}, where) for t in texts] if isinstance(texts, list) else [_text_of(entry, where)]
        if not images or texts == [None] or not texts or any(not isinstance(i, str) or not i for i in images):
            raise ConfigError(
                f"{where} needs an image and a text (or question); a JSON entry may give images: [...] with one text "
                "or texts: [...] with one image"
            )
        if len(images) > 1 and len(texts) > 1:
            raise ConfigError(f"{where} gives several images and several texts; give one of them as a single value")
        pairs += [PredictPair(img, folder / img, text) for img in images for text in texts]
    if not pairs:
        raise ConfigError(f"predict_path {path} holds no (image, text) pairs")
    return pairs


class PredictPairDataset(Dataset):
    """Item -> dict(image, text, image_index, index), or dict(bad=index) when its image cannot be read."""

    def __init__(self, pairs: list[PredictPair], transform: ImageTextTransform) -> None:
        self.pairs, self.transform = pairs, transform
        images = {}
        self.image_index = [images.setdefault(p.path, len(images)) for p in pairs]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        pair = self.pairs[index]
        try:
            image = read_image(pair.path, 3)
        except (BadImageError, FileNotFoundError):
            return {"bad": index}
        return {
            "image": self.transform(image),
            "text": pair.text,
            "image_index": self.image_index[index],
            "index": index,
        }


class PredictCollate:
    """ImageTextCollate over the readable items; `bad` lists the indices of the rows whose image could not be read."""

    def __init__(self, collate: ImageTextCollate) -> None:
        self.collate = collate

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        good = [it for it in items if "bad" not in it]
        batch = self.collate(good) if good else {}
        batch["bad"] = torch.tensor([it["bad"] for it in items if "bad" in it], dtype=torch.long)
        return batch
