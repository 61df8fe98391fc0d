"""Image-text pairs from CSV / JSONL files and tar shards (lit_vit.data.image_text.pairs / shards): the shards tool
writes what the reader reads back, the shard order gives every (rank, worker) its own stretch of shards and every pair
once per epoch, a run interrupted mid-epoch resumes with the same order (and the same weights), and bad input is one
line naming it."""

import contextlib
import csv
import io
import json
import os
import subprocess
import sys
import tarfile

import lightning as L
import numpy as np
import pytest
import torch
from _cli_callbacks import CrashAtStep
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from PIL import Image
from torch.utils.data import DataLoader, Dataset, get_worker_info

from lit_vit.callbacks.resume import ExactResume
from lit_vit.cli import main
from lit_vit.data.image_text.pairs import PairsDataModule, ShardSampler
from lit_vit.data.image_text.scenes import SceneDataModule, Scenes
from lit_vit.data.image_text.shards import BadShardError, expand_braces, index_shard
from lit_vit.errors import BadImageError, ConfigError
from lit_vit.models import ViLT
from lit_vit.modules import ViltPretraining

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_SCENES, SHARD_SIZE = 24, 4  # 6 shards of 4 scenes, 2 captions each: 48 pairs


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    """Training scenes written by `python -m lit_vit shards`; the brace pattern it printed."""
    out = tmp_path_factory.mktemp("shards")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["shards", "--input", f"scenes:train:{NUM_SCENES}", "--output", str(out), "--shard_size", str(SHARD_SIZE)])
    pattern = buf.getvalue().strip()
    assert pattern == f"{out}/{{000000..000005}}.tar"
    return pattern


def datamodule(train, val=None, **kwargs) -> PairsDataModule:
    options = dict(image_size=32, patch_size=8, max_text_len=16, vocab_size=200, batch_size=8, num_workers=0)
    return PairsDataModule(train_sources=train, val_sources=val or train, **{**options, **kwargs})


# --- the tool and the reader ----------------------------------------------------------------------------------------
def test_brace_patterns_expand_to_zero_padded_ranges_and_lists():
    assert expand_braces("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    with pytest.raises(ConfigError, match=r"runs backwards"):
        expand_braces("{5..1}.tar")


def test_shards_written_by_the_tool_read_back_the_same_pairs(shards):
    files = expand_braces(shards)
    with tarfile.open(files[0]) as tar:  # WebDataset layout: <key>.png + <key>.json (two captions)
        assert tar.getnames()[:4] == ["000000000.png", "000000000.json", "000000001.png", "000000001.json"]
    records = datamodule([shards]).records("train")
    scenes = Scenes(NUM_SCENES, SceneDataModule.SPLIT_SEEDS["train"])
    assert records.captions == [scenes.captions(i) for i in range(NUM_SCENES)]
    for i in (0, 5, NUM_SCENES - 1):  # PNG: the pixels survive exactly
        np.testing.assert_array_equal(records.images.load(i), scenes.load(i))


def write_png(path, value: int) -> None:
    Image.fromarray(np.full((40, 48, 3), value, dtype=np.uint8)).save(path)


def test_csv_and_jsonl_sources_group_captions_by_image_and_concatenate(tmp_path, shards):
    write_png(tmp_path / "a.png", 10)
    write_png(tmp_path / "b.png", 200)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["image", "caption"], ["a.png", "a dark square"], ["b.png", "a light one"], ["a.png", "dark"]])
    (tmp_path / "pairs.jsonl").write_text(
        json.dumps({"image": "b.png", "captions": ["light", "bright"]})
        + "\n"
        + json.dumps({"image": "a.png", "caption": "x"})
    )
    dm = datamodule([str(tmp_path / "pairs.csv"), str(tmp_path / "pairs.jsonl"), shards])
    rec = dm.records("train")
    assert rec.captions[:4] == [["a dark square", "dark"], ["a light one"], ["light", "bright"], ["x"]]
    assert len(rec.captions) == 4 + NUM_SCENES
    assert [int(rec.images.load(i)[0, 0, 0]) for i in range(4)] == [10, 200, 200, 10]
    dm.setup("fit")
    # units of the order: one block per table (block_size 1000), then the 6 shards, 2 captions per scene
    assert dm.train_sampler(dm.datasets["train"]).unit_sizes.tolist() == [3, 3] + [8] * 6


def write_jpeg(path, value: int) -> None:
    Image.fromarray(np.full((40, 48, 3), value, dtype=np.uint8)).save(path, format="JPEG")


def shard_contents(pattern: str) -> list[tuple[str, bytes, str]]:
    out = []
    for f in expand_braces(pattern):
        with tarfile.open(f) as tar:
            out += [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    return out


def run_tool(*argv: str) -> str:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        main(["shards", *argv])
    return buf.getvalue().strip()


def tool_error(capsys, *argv: str) -> str:
    """The one-line `error:` of a tool run that stops (exit status 2)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_tool(*argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.startswith("error: ") and "\n" not in err
    return err


def test_the_tool_writes_a_csv_a_folder_and_coco_annotations_as_shards_with_the_image_bytes_unchanged(tmp_path, capsys):
    write_png(tmp_path / "a.png", 10)
    write_jpeg(tmp_path / "b.jpeg", 200)
    (tmp_path / "p.csv").write_text("image,caption\na.png,one\nb.jpeg,two\na.png,uno\n")
    pattern = run_tool("--input", str(tmp_path / "p.csv"), "--output", str(tmp_path / "csv"), "--shard_size", "1")
    names = [(n, d) for n, d in shard_contents(pattern)]
    assert [n for n, _ in names] == ["000000000.png", "000000000.json", "000000001.jpg", "000000001.txt"]
    assert names[0][1] == (tmp_path / "a.png").read_bytes() and names[2][1] == (tmp_path / "b.jpeg").read_bytes()
    assert json.loads(names[1][1]) == {"captions": ["one", "uno"]} and names[3][1] == b"two"

    folder = tmp_path / "folder"
    folder.mkdir()
    write_png(folder / "x.png", 1)
    (folder / "x.txt").write_text("first caption\nsecond caption\n")
    pattern = run_tool("--input", str(folder), "--output", str(tmp_path / "fold"))
    assert datamodule([pattern]).records("train").captions == [["first caption", "second caption"]]
    write_png(folder / "y.png", 2)  # no y.txt
    error = tool_error(capsys, "--input", str(folder), "--output", str(tmp_path / "fold2"))
    assert "1 of 2 images in" in error and "have no caption file, the first is" in error and "y.png" in error
    error = tool_error(capsys, "--input", str(tmp_path / "p.csv"), "--output", str(tmp_path / "csv"))
    assert "already holds .tar files" in error

    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "train2017").mkdir()
    write_jpeg(tmp_path / "coco" / "train2017" / "000000000009.jpg", 50)
    captions = [{"image_id": 9, "caption": "a plate"}, {"image_id": 9, "caption": "food "}]
    annotations = {"images": [{"id": 9, "file_name": "000000000009.jpg"}], "annotations": captions}
    (tmp_path / "coco" / "annotations" / "captions_train2017.json").write_text(json.dumps(annotations))
    pattern = run_tool("--input", f"coco:{tmp_path / 'coco'}:train", "--output", str(tmp_path / "coco_shards"))
    assert datamodule([pattern]).records("train").captions == [["a plate", "food"]]


# --- the order ----------------------------------------------------------------------------------------------------
class WhoReads(Dataset):
    """Item (index, seed) -> (index, DataLoader worker id)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        return item[0], get_worker_info().id


def read_epochs(sizes, epochs, rank, ranks=2, workers=2, batch=3, seed=0):
    """What each epoch's batches hold and which worker read each pair, through one DataLoader with persistent workers
    (as lit_vit's loaders: the sampler, in the main process, is told each epoch; the workers are not restarted)."""
    sampler = ShardSampler(WhoReads(sum(sizes)), sizes, seed, batch, workers, num_replicas=ranks, rank=rank)
    loader = DataLoader(sampler.dataset, batch, sampler=sampler, num_workers=workers, persistent_workers=True)
    for epoch in epochs:
        sampler.set_epoch(epoch)
        yield sampler, [(int(i), int(w)) for idx, wid in loader for i, w in zip(idx, wid)]


def test_two_ranks_of_two_workers_read_disjoint_shards_and_every_pair_once_per_epoch():
    sizes = [6] * 8  # 8 shards; 4 (rank, worker) slots of 4 batches of 3
    unit = np.repeat(np.arange(8), 6)
    seen = {0: [], 1: []}
    shards_of: dict[int, dict] = {0: {}, 1: {}}
    for rank in (0, 1):
        for epoch, (sampler, read) in enumerate(read_epochs(sizes, (0, 1), rank)):
            assert len(read) == len(sampler) == 24
            seen[epoch] += [i for i, _ in read]
            for worker in (0, 1):
                mine = [i for i, w in read if w == worker]
                # each worker reads exactly its slot's stretch, in order
                assert mine == sampler.slot_indices(rank * 2 + worker).tolist()
                shards_of[epoch][(rank, worker)] = set(unit[mine].tolist())
    for epoch in (0, 1):
        assert sorted(seen[epoch]) == list(range(48))  # every pair exactly once
        assert all(len(s) == 2 for s in shards_of[epoch].values())
        assert set().union(*shards_of[epoch].values()) == set(range(8))  # 4 slots x 2 whole shards, disjoint
    assert shards_of[0] != shards_of[1]  # another epoch, another assignment


def test_the_order_is_a_function_of_seed_and_epoch_and_uneven_shards_leave_out_less_than_a_round():
    sizes = [5, 7, 3, 10]  # 25 pairs, 4 slots x batches of 2: 3 batches per slot, 1 pair left out
    orders = {}
    for seed, epoch in [(0, 0), (0, 0), (0, 1), (1, 0)]:
        sampler = ShardSampler(WhoReads(25), sizes, seed, 2, 2, num_replicas=2, rank=0)
        sampler.set_epoch(epoch)
        orders.setdefault((seed, epoch), []).append(sampler.order())
        assert sampler.left_out == 1 and len(sampler) == 12
    assert orders[(0, 0)][0] == orders[(0, 0)][1]
    assert orders[(0, 0)][0] != orders[(0, 1)][0] and orders[(0, 0)][0] != orders[(1, 0)][0]
    both = []
    for rank in (0, 1):
        s = ShardSampler(WhoReads(25), sizes, 0, 2, 2, num_replicas=2, rank=rank)
        both += s.order()
    assert len(set(both)) == 24  # disjoint across ranks


def test_a_resumed_sampler_skips_the_consumed_batches_and_names_each_workers_shard_and_offset():
    sizes = [6] * 8
    full = ShardSampler(WhoReads(48), sizes, 0, 3, 2)
    full.set_epoch(3)
    order = [i for i, _ in full]
    resumed = ShardSampler(WhoReads(48), sizes, 0, 3, 2)
    resumed.set_epoch(3)
    resumed.skip_once(5 * 3)  # 5 batches trained: worker 0 did 3 (batches 0, 2, 4), worker 1 did 2
    assert [i for i, _ in resumed] == order[15:]
    pos = resumed.position(5)
    units = resumed.unit_order()
    # worker 0's stretch is the epoch's first 24 pairs (4 shards): 9 read -> units[1] + 3; worker 1's from pair 24: +6
    assert pos == [(0, str(units[1]), 3), (1, str(units[5]), 0)]
    # through real workers: after an odd number of batches the workers swap stretches, each still reads only one
    resumed.skip_once(5 * 3)
    loader = DataLoader(resumed.dataset, 3, sampler=resumed, num_workers=2)
    read = [(int(i), int(w)) for idx, wid in loader for i, w in zip(idx, wid)]
    assert [i for i, _ in read] == order[15:]
    for worker, slot in ((0, 1), (1, 0)):
        assert set(i for i, w in read if w == worker) <= set(resumed.slot_indices(slot).tolist())


# --- a pre-training run on shards, interrupted and resumed ----------------------------------------------------------
TINY = dict(max_text_len=16, img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, mlp_ratio=2.0,
            drop_rate=0.0, max_image_len=-1)  # fmt: skip


class RecordBatches(Callback):
    def __init__(self) -> None:
        self.batches: list[tuple[int, list[int]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batches.append((trainer.global_step, batch["index"].tolist()))


def pretrain(run_dir, shards, *callbacks, ckpt_path=None) -> ViltPretraining:
    L.seed_everything(0)
    dm = datamodule([shards], batch_size=8)  # 48 pairs: 6 batches an epoch
    module = ViltPretraining(ViLT(**TINY), lr=1e-3)
    trainer = L.Trainer(
        default_root_dir=run_dir, max_epochs=2, limit_val_batches=1, num_sanity_val_steps=0, accelerator="cpu",
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=run_dir / "checkpoints", every_n_train_steps=4, save_last=True),
                   ExactResume(), *callbacks],
    )  # fmt: skip
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module


def test_pretraining_on_shards_killed_mid_epoch_resumes_with_the_same_batches_and_weights(tmp_path, shards):
    ref = RecordBatches()
    ref_weights = pretrain(tmp_path / "ref", shards, ref).state_dict()
    assert [s for s, _ in ref.batches] == list(range(12))
    run = RecordBatches()
    with pytest.raises(RuntimeError, match="simulated crash"):
        pretrain(tmp_path / "run", shards, run, CrashAtStep(9))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    state = torch.load(last, map_location="cpu", weights_only=False)  # our own checkpoint
    assert state["PairsDataModule"] == {"epoch": 1, "batches_done": 2, "seed": 0, "world_size": 1, "num_workers": 0}
    crashed = len(run.batches)
    resumed = pretrain(tmp_path / "run", shards, run, ckpt_path=str(last))
    assert run.batches[crashed:] == ref.batches[8:]
    weights = resumed.state_dict()
    assert weights.keys() == ref_weights.keys() and all(torch.equal(weights[k], ref_weights[k]) for k in weights)


def test_a_mid_epoch_checkpoint_of_another_worker_count_is_refused():
    dm = datamodule(["x.csv"], num_workers=2)
    with pytest.raises(ConfigError, match=r"1 process\(es\) x 0 data workers, this run has 1 x 2"):
        dm.load_state_dict({"epoch": 1, "batches_done": 3, "seed": 0, "world_size": 1, "num_workers": 0})
    dm.load_state_dict({"epoch": 1, "batches_done": 0, "seed": 0, "world_size": 1, "num_workers": 0})  # epoch end


# --- bad input ----------------------------------------------------------------------------------------------------
def copy_shards(src_pattern, dst) -> str:
    dst.mkdir()
    for f in expand_braces(src_pattern):
        (dst / f.rsplit("/", 1)[-1]).write_bytes(open(f, "rb").read())
    return f"{dst}/{{000000..000005}}.tar"


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_bad_shard_stops_with_its_name_or_is_skipped_and_counted(tmp_path, shards):
    pattern = copy_shards(shards, tmp_path / "s")
    (tmp_path / "s" / "000002.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(BadShardError) as err:
        datamodule([pattern]).records("train")
    assert "000002.tar is not an uncompressed tar file" in one_line(err) and "skip_bad_shards: true" in one_line(err)
    with pytest.warns(UserWarning, match=r"skipping 1 of 6 shards .*000002.tar"):
        rec = datamodule([pattern], skip_bad_shards=True).records("train")
    assert len(rec.captions) == NUM_SCENES - SHARD_SIZE


def test_a_truncated_shard_and_a_missing_shard_are_one_line_errors(tmp_path, shards):
    pattern = copy_shards(shards, tmp_path / "s")
    data = (tmp_path / "s" / "000001.tar").read_bytes()
    (tmp_path / "s" / "000001.tar").write_bytes(data[:700])  # inside the first image
    with pytest.raises(BadShardError) as err:
        index_shard(tmp_path / "s" / "000001.tar")
    assert "000001.tar is truncated: member 000000004.png ends at byte" in one_line(err)
    (tmp_path / "s" / "000001.tar").write_bytes(data[:2300])  # inside the third header
    with pytest.raises(BadShardError) as err:
        index_shard(tmp_path / "s" / "000001.tar")
    assert "000001.tar is truncated or damaged at byte" in one_line(err)
    (tmp_path / "s" / "000004.tar").unlink()
    with pytest.raises(ConfigError) as err:
        datamodule([pattern]).records("train")
    assert "1 of 6 shards" in one_line(err) and "000004.tar" in one_line(err)


def test_incomplete_samples_are_skipped_and_counted_and_a_corrupt_image_names_shard_and_key(tmp_path):
    path = tmp_path / "000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, data in [("k1.png", b"garbage"), ("k1.txt", b"a broken image"), ("k2.txt", b"no image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.warns(UserWarning, match=r"1 samples .* are skipped"):
        rec = datamodule([str(tmp_path / "{000000..000000}.tar")]).records("train")
    assert rec.captions == [["a broken image"]]
    with pytest.raises(BadImageError) as err:
        rec.images.load(0)
    assert f"cannot read image {path}:k1" in one_line(err) and "skip_corrupt_images: true" in one_line(err)
    rec = datamodule([str(path)], skip_corrupt_images=True).records("train")
    with pytest.warns(UserWarning, match="skipping corrupt image"):
        assert rec.images.load(0) is None


def test_missing_images_and_bad_tables_are_one_line_errors(tmp_path):
    write_png(tmp_path / "a.png", 1)
    (tmp_path / "p.csv").write_text("image,caption\na.png,one\nmissing.png,two\n")
    with pytest.raises(ConfigError) as err:
        datamodule([str(tmp_path / "p.csv")]).records("train")
    assert "1 of 2 images named in" in one_line(err) and "missing.png" in one_line(err)
    (tmp_path / "q.csv").write_text("path,text\na.png,one\n")
    with pytest.raises(ConfigError, match=r"needs the columns image and caption"):
        datamodule([str(tmp_path / "q.csv")]).records("train")
    with pytest.raises(ConfigError, match=r"is not a .csv, .jsonl or .tar shard pattern"):
        datamodule([str(tmp_path / "p.parquet")]).records("train")


# --- the recipe ---------------------------------------------------------------------------------------------------
def test_the_shards_recipe_pretrains_from_shards_written_by_the_tool(tmp_path, capsys):
    for split, num in (("train", 64), ("val", 8)):
        out = tmp_path / "scenes_shards" / split
        main(["shards", "--input", f"scenes:{split}:{num}", "--output", str(out), "--shard_size", "8"])
    run = tmp_path / "run"
    main([
        "fit", "--config=experiments/vilt_pretrain_shards_embedded.yaml", f"--data.init_args.root={tmp_path}",
        f"--trainer.default_root_dir={run}", "--trainer.max_epochs=1", "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
        "--model.model.init_args.embed_dim=32", "--model.model.init_args.depth=1",
        "--model.model.init_args.num_heads=2", "--data.init_args.batch_size=32", "--data.init_args.num_workers=0",
        "--trainer.callbacks=[]",  # the alignment maps have their own test (test_alignment_maps)
    ])  # fmt: skip
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert state["global_step"] == 4  # 8 shards x 8 scenes x 2 captions / 32
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert any(r.get("val/itm_acc") for r in rows) and any(r.get("train/wpa_loss_epoch") for r in rows)


@pytest.mark.slow
def test_ddp_ranks_of_two_workers_train_on_disjoint_whole_shards_and_every_pair_once_per_epoch(tmp_path):
    for split, num in (("train", 64), ("val", 8)):
        main(["shards", "--input", f"scenes:{split}:{num}", "--output", str(tmp_path / "scenes_shards" / split),
              "--shard_size", "8"])  # fmt: skip
    callback = json.dumps([{"class_path": "_pairs_callbacks.RecordPairs", "init_args": {"folder": str(tmp_path)}}])
    args = [
        "fit", "--config=experiments/vilt_pretrain_shards_embedded.yaml", f"--data.init_args.root={tmp_path}",
        f"--trainer.default_root_dir={tmp_path / 'run'}", "--trainer.max_epochs=2", "--trainer.devices=2",
        "--trainer.strategy=ddp", "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--model.model.init_args.embed_dim=32", "--model.model.init_args.depth=1",
        "--model.model.init_args.num_heads=2", "--data.init_args.batch_size=8", "--data.init_args.num_workers=2",
        f"--trainer.callbacks={callback}",
    ]  # fmt: skip
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(__file__))
    cmd = [sys.executable, "-m", "lit_vit", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for r in (0, 1) for line in open(tmp_path / f"rank{r}.jsonl")]
    shards_of = {}
    for epoch in (0, 1):
        pairs = [i for _, e, _, batch in rows if e == epoch for i in batch]
        assert sorted(pairs) == list(range(128))  # 8 shards x 8 scenes x 2 captions, each once
        for rank in (0, 1):
            batches = [batch for r, e, _, batch in rows if e == epoch and r == rank]
            assert len(batches) == 8  # the same number of batches on both ranks
            for worker in (0, 1):  # batch k of a rank is worker k % 2's
                shards_of[(epoch, rank, worker)] = {i // 16 for batch in batches[worker::2] for i in batch}
        mine = [s for (e, _, _), s in shards_of.items() if e == epoch]
        assert all(len(s) == 2 for s in mine) and set().union(*mine) == set(range(8))  # whole shards, disjoint
    assert [s for (e, *_), s in shards_of.items() if e == 0] != [s for (e, *_), s in shards_of.items() if e == 1]
