"""Image-text pairs in WebDataset-style tar shards: the reader (an index of each shard's members, random access by
offset) and the writer (`python -m lit_vit shards`).

A shard is an uncompressed tar whose members are grouped into samples by key (the member name up to its first dot,
as WebDataset does): `<key>.jpg` / `.jpeg` / `.png` / `.webp` is the image and `<key>.txt` (one caption) or
`<key>.json` (`{"caption": ...}` or `{"captions": [...]}`) the text. Shard lists are written as brace patterns,
`data/cc/{000000..000099}.tar`.

Why our own reader (Python's tarfile) and not the `webdataset` library or torchdata: every shard is indexed once (the
byte offset of each image, its captions), so a sample is a seek + read and the training order is a plain list of
indices drawn by a `SeededSampler` subclass (lit_vit.data.image_text.pairs.ShardSampler). That list is a function of
(seed, epoch, ranks, workers): each (rank, worker) reads its own stretch of shards, and a resumed run skips the
consumed part of the list by position, without reading it, through the one mid-epoch resume mechanism of every
lit_vit DataModule (lit_vit.data.sampling). The `webdataset` library streams shards inside the
workers (an IterableDataset): it keeps no position, so a resumed run re-reads (or drops) the interrupted shards, and
Lightning cannot set its epoch on a sampler; torchdata's DataPipes are deprecated and its StatefulDataLoader would
replace the DataLoader that Lightning and lit_vit's resume handle. No new dependency either.
"""

import argparse
import csv
import io
import json
import os
import re
import sys
import tarfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lit_vit.errors import BadImageError, ConfigError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTS = ("txt", "json")
_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """`a/{000..002}.tar` -> a/000.tar, a/001.tar, a/002.tar (zero padding kept); `{x,y}` lists; several braces
    multiply."""
    parts = _BRACE.split(pattern)  # literal, brace body, literal, ...
    choices: list[list[str]] = []
    for i, part in enumerate(parts):
        if i % 2 == 0:
            choices.append([part])
            continue
        m = re.fullmatch(r"(\d+)\.\.(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            if hi < lo:
                raise ConfigError(f"shard pattern {pattern}: range {{{part}}} runs backwards; write {{lo..hi}}")
            width = len(m.group(1))
            choices.append([f"{n:0{width}d}" for n in range(lo, hi + 1)])
        elif "," in part:
            choices.append(part.split(","))
        else:
            raise ConfigError(f"shard pattern {pattern}: cannot expand {{{part}}}; write {{000..099}} or {{a,b}}")
    return ["".join(c) for c in product(*choices)]


# --- reading ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSample:
    """One sample of a shard: where its image bytes are and its captions."""

    shard: str
    key: str
    offset: int
    size: int
    captions: tuple[str, ...]


class BadShardError(ConfigError):
    """A shard that cannot be read (not a tar, compressed, truncated); the message names it and the fix."""


def _captions(ext: str, data: bytes, where: str) -> list[str]:
    text = data.decode("utf-8")
    if ext == "txt":
        return [text.strip()]
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise BadShardError(f"{where} is not valid JSON ({err.msg}, line {err.lineno})") from err
    if isinstance(obj, dict) and isinstance(obj.get("captions"), list):
        return [str(c).strip() for c in obj["captions"]]
    if isinstance(obj, dict) and isinstance(obj.get("caption"), str):
        return [obj["caption"].strip()]
    raise BadShardError(f'{where} has neither "caption" (a string) nor "captions" (a list)')


def index_shard(path: str | Path) -> tuple[list[ShardSample], int]:
    """The samples of one shard in member order, and how many keys were incomplete (an image without a caption or
    a caption without an image; skipped). Raises BadShardError for a file that is not a readable, complete tar."""
    path = str(path)
    size = os.path.getsize(path)
    images: dict[str, tuple[int, int]] = {}
    texts: dict[str, list[str]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tar:  # "r:": uncompressed only, the one layout that allows seeking
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    continue
                key = member.name[: len(member.name) - len(base)] + base.split(".", 1)[0]
                ext = base.split(".", 1)[1].lower()
                if member.offset_data + member.size > size:
                    raise BadShardError(
                        f"shard {path} is truncated: member {member.name} ends at byte "
                        f"{member.offset_data + member.size}, the file has {size}"
                    )
                if key not in images and key not in texts:
                    order.append(key)
                if ext in IMAGE_EXTS:
                    images[key] = (member.offset_data, member.size)
                elif ext in TEXT_EXTS:
                    texts[key] = _captions(ext, tar.extractfile(member).read(), f"{path}:{member.name}")
            # tarfile ends quietly at a cut or damaged header: a complete tar has its zero end block right there
            end = tar.offset
        with open(path, "rb") as f:
            f.seek(end)
            block = f.read(tarfile.BLOCKSIZE)
        if len(block) < tarfile.BLOCKSIZE or any(block):
            raise BadShardError(f"shard {path} is truncated or damaged at byte {end} (no end-of-archive block there)")
    except tarfile.ReadError as err:
        raise BadShardError(f"shard {path} is not an uncompressed tar file ({err})") from err
    except (UnicodeDecodeError, EOFError) as err:
        raise BadShardError(f"shard {path} cannot be read ({type(err).__name__}: {err})") from err
    samples = [
        ShardSample(path, k, *images[k], tuple(c for c in texts[k] if c))
        for k in order
        if k in images and k in texts and any(texts[k])
    ]
    return samples, len(order) - len(samples)


class ShardImages:
    """The images of tar shards, read by offset: `load(k)` is sample k's image as HWC uint8 RGB (an ImageSource).

    Open files are kept per process (DataLoader workers open their own)."""

    def __init__(self, samples: Sequence[ShardSample], skip_corrupt: bool = False) -> None:
        self.samples = list(samples)
        self.skip_corrupt = skip_corrupt
        self._files: dict[str, io.BufferedReader] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_files": {}}  # file handles stay in the process that opened them

    def _file(self, path: str) -> io.BufferedReader:
        if self._pid != os.getpid():  # forked into a worker: the parent's handles share its file position
            self._files, self._pid = {}, os.getpid()
        if path not in self._files:
            self._files[path] = open(path, "rb")  # noqa: SIM115 - kept open for the next samples of the shard
        return self._files[path]

    def load(self, index: int) -> np.ndarray | None:
        s = self.samples[index]
        f = self._file(s.shard)
        f.seek(s.offset)
        data = f.read(s.size)
        try:
            with Image.open(io.BytesIO(data)) as img:
                return np.asarray(img.convert("RGB"))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            where = f"{s.shard}:{s.key}"
            if not self.skip_corrupt:
                reason = f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"
                fix = "rewrite the shard, or set data.skip_corrupt_images: true to skip such images"
                raise BadImageError.for_file(where, reason, fix) from err
            warnings.warn(f"skipping corrupt image {where}", stacklevel=2)
            return None


# --- writing ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairRecord:
    """One image and its captions, as the writer and the CSV / JSONL reader see them."""

    image: str
    captions: tuple[str, ...]


def read_pairs_table(path: str | Path) -> list[PairRecord]:
    """(image, captions) from a CSV (header with `image` and `caption` columns) or a JSONL file (`{"image": ...,
    "caption": ...}` or `"captions": [...]` per line). Rows naming the same image are one image with several
    captions, in first-appearance order. Relative image paths are relative to the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pairs file {path} does not exist; see data/README.md for the CSV / JSONL layout")
    rows: list[tuple[str, list[str]]] = []
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not {"image", "caption"} <= set(reader.fieldnames or ()):
                raise ConfigError(
                    f"{path}: the CSV header is {reader.fieldnames}; it needs the columns image and caption"
                )
            rows = [(r["image"], [r["caption"]]) for r in reader]
    elif path.suffix.lower() in (".jsonl", ".json"):
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{path} line {n} is not JSON ({err.msg}); one object per line") from err
                caps = obj.get("captions", [obj["caption"]] if "caption" in obj else None)
                if "image" not in obj or not isinstance(caps, list):
                    raise ConfigError(f'{path} line {n} needs "image" and "caption" (or a "captions" list)')
                rows.append((obj["image"], [str(c) for c in caps]))
    else:
        raise ConfigError(f"pairs file {path}: unknown kind {path.suffix!r}; use .csv, .jsonl or a .tar shard pattern")
    grouped: dict[str, list[str]] = {}
    for image, caps in rows:
        grouped.setdefault(str(path.parent / image), []).extend(c.strip() for c in caps)
    return [PairRecord(image, tuple(caps)) for image, caps in grouped.items()]


def read_pairs_folder(folder: str | Path) -> list[PairRecord]:
    """Images with a caption file of the same name (`a.jpg` + `a.txt`, one caption per line), sorted by name."""
    folder = Path(folder)
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS)
    records, missing = [], []
    for image in images:
        text = image.with_suffix(".txt")
        if not text.is_file():
            missing.append(image)
            continue
        caps = [line.strip() for line in text.read_text(encoding="utf-8").splitlines() if line.strip()]
        records.append(PairRecord(str(image), tuple(caps)))
    if missing:
        raise ConfigError(
            f"{len(missing)} of {len(images)} images in {folder} have no caption file, the first is {missing[0]}; "
            "add <name>.txt beside each image"
        )
    return records


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: the same input gives the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    samples: Iterable[tuple[bytes, str, Sequence[str]]], output: str | Path, shard_size: int
) -> tuple[list[Path], int]:
    """Write (image bytes, image extension, captions) samples into `output/000000.tar`, ... with `shard_size` samples
    each; keys are the sample numbers (9 digits). One caption is written as `.txt`, several as `.json`. Returns the
    shard files and the number of samples."""
    if shard_size < 1:
        raise ConfigError(f"shard_size must be a positive integer, got {shard_size}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    shards: list[Path] = []
    tar: tarfile.TarFile | None = None
    n = 0
    try:
        for data, ext, captions in samples:
            if n % shard_size == 0:
                if tar is not None:
                    tar.close()
                shards.append(output / f"{len(shards):06d}.tar")
                tar = tarfile.open(shards[-1], "w", format=tarfile.USTAR_FORMAT)
            key = f"{n:09d}"
            _add(tar, f"{key}.{ext}", data)
            if len(captions) == 1:
                _add(tar, f"{key}.txt", captions[0].encode("utf-8"))
            else:
                _add(tar, f"{key}.json", json.dumps({"captions": list(captions)}).encode("utf-8"))
            n += 1
    finally:
        if tar is not None:
            tar.close()
    return shards, n


def _file_samples(records: Sequence[PairRecord]) -> Iterator[tuple[bytes, str, Sequence[str]]]:
    missing = [r.image for r in records if not Path(r.image).is_file()]
    if missing:
        raise ConfigError(f"{len(missing)} of {len(records)} images are missing, the first is {missing[0]}")
    for r in records:
        ext = Path(r.image).suffix.lower().lstrip(".")
        if ext not in IMAGE_EXTS:
            raise ConfigError(f"{r.image}: unknown image kind {ext!r}; use one of {', '.join(IMAGE_EXTS)}")
        yield Path(r.image).read_bytes(), "jpg" if ext == "jpeg" else ext, r.captions


def scene_samples(split: str, num: int) -> Iterator[tuple[bytes, str, Sequence[str]]]:
    """The generated scenes of SceneDataModule's split (PNG, both captions): shards for tests and CPU demos."""
    from lit_vit.data.image_text.scenes import SceneDataModule, Scenes

    if split not in SceneDataModule.SPLIT_SEEDS:
        raise ConfigError(f"unknown scenes split {split!r}; choose one of {', '.join(SceneDataModule.SPLIT_SEEDS)}")
    scenes = Scenes(num, SceneDataModule.SPLIT_SEEDS[split])
    for i in range(num):
        buf = io.BytesIO()
        Image.fromarray(scenes.load(i)).save(buf, format="PNG")
        yield buf.getvalue(), "png", scenes.captions(i)


def coco_records(root: str, split: str, year: int) -> list[PairRecord]:
    """The images and captions of COCO's caption annotations, as CocoCaptionsDataModule reads them."""
    from lit_vit.data.image_text.coco import CocoCaptionsDataModule

    if split not in ("train", "val"):
        raise ConfigError(f"unknown COCO split {split!r}; choose train or val")
    rec = CocoCaptionsDataModule(root=root, year=year).records(split)
    return [PairRecord(path, tuple(caps)) for path, caps in zip(rec.images.paths, rec.captions)]


def input_samples(spec: str) -> Iterator[tuple[bytes, str, Sequence[str]]]:
    """What `--input` names: a CSV / JSONL file, a folder of images + .txt captions, `coco:<root>:<split>[:<year>]`
    or `scenes:<split>:<num>`."""
    if spec.startswith("coco:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4) or (len(parts) == 4 and not parts[3].isdigit()):
            raise ConfigError(f"--input {spec}: write coco:<root>:<train|val>[:<year>], e.g. coco:data/coco:train")
        return _file_samples(coco_records(parts[1], parts[2], int(parts[3]) if len(parts) == 4 else 2017))
    if spec.startswith("scenes:"):
        parts = spec.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise ConfigError(f"--input {spec}: write scenes:<split>:<number>, e.g. scenes:train:400")
        return scene_samples(parts[1], int(parts[2]))
    path = Path(spec)
    if path.is_dir():
        return _file_samples(read_pairs_folder(path))
    return _file_samples(read_pairs_table(path))


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lit_vit shards",
        description="Write image-text pairs as WebDataset-style tar shards (<key>.jpg/.png + <key>.txt/.json) for "
        "lit_vit.data.PairsDataModule; prints the brace pattern that names them.",
    )
    parser.add_argument(
        "--input",
        required=True,
        help="a CSV (columns image, caption), a JSONL (image, caption or captions), a folder of images with "
        "<name>.txt captions, coco:<root>:<train|val>[:<year>] (COCO caption annotations, as CocoCaptionsDataModule "
        "reads them), or scenes:<split>:<number> (the generated scenes)",
    )
    parser.add_argument("--output", required=True, help="folder for 000000.tar, 000001.tar, ...")
    parser.add_argument("--shard_size", type=int, default=1000, help="samples (images) per shard (default 1000)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    if output.is_dir() and any(output.glob("*.tar")):
        raise ConfigError(f"--output {output} already holds .tar files; choose an empty folder or remove them")
    shards, n = write_shards(input_samples(args.input), output, args.shard_size)
    if not shards:
        raise ConfigError(f"--input {args.input} holds no image-text pairs")
    pattern = output / f"{{{0:06d}..{len(shards) - 1:06d}}}.tar"
    print(f"wrote {n} samples in {len(shards)} shards: {pattern}", file=sys.stderr)
    print(pattern)
