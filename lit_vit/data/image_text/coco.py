"""Image-text DataModules over annotation files: COCO captions, the Karpathy split (COCO / Flickr30k), VQAv2."""

import json
from pathlib import Path

from lit_vit.data.image_text.datamodule import ImageTextDataModule
from lit_vit.data.image_text.sources import ImageFiles, Question, SplitRecords
from lit_vit.errors import ConfigError


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
