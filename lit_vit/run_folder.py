"""The run folder: its rules, which the CLI applies before anything is written (one writer at a time, a new fit only
into an empty folder or the run it resumes, a resume only with the checkpoint's model config, a config.yaml read as a
recipe of its own folder, evaluation folders that never collide), and what writes its files during a run (metrics.csv
that survives resumes: `RunLogger`; atomic checkpoints: `AtomicCheckpointIO`), with file-system errors as one line.

A run lives in the Trainer's `default_root_dir`: config.yaml, hparams.yaml, metrics.csv, checkpoints/last.ckpt and
checkpoints/best.ckpt (the checkpoint callbacks are lit_vit.callbacks.run's), evaluations/<one folder per evaluation>.
"""

import csv
import errno
import json
import os
import shlex
import shutil
import socket
import sys
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from lit_vit import lightning_compat
from lit_vit.ablation.claims import Claim, read_claim, try_claim
from lit_vit.config_diff import flatten
from lit_vit.errors import ConfigError, find_in_chain
from lit_vit.models import weights


def is_primary_process(per_machine: bool = False) -> bool:
    """Global rank 0 of a multi-process launch (Lightning's launcher, torchrun, SLURM srun), or a single process: the
    one process that claims and writes a run folder's own files, and that plans and reports an ablation sweep. With
    `per_machine`, local rank 0: the one process per machine that prepares data on that machine's disk.

    Read from the launchers' environment, so it answers before a Trainer exists (use `trainer.is_global_zero` inside
    a fit: the same answer)."""
    keys = ("LOCAL_RANK",) if per_machine else ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return all(os.environ.get(k, "0") == "0" for k in keys)


# Claims taken by this process's fits (released by `release_folders`, which the CLI calls when a command ends).
_held: list[tuple[Claim, Path, bool]] = []


def _describe(claim: dict[str, Any] | None) -> str:
    if not claim:
        return "another process"
    started = claim.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, int | float) else "?"
    return f"pid {claim.get('pid', '?')} on {claim.get('host', '?')} (since {when})"


def hold_run_folder(run_dir: Path) -> None:
    """Claim `run_dir` for this fit (atomically, O_EXCL, as the sweep claims its runs) before anything is written, or
    stop with a ConfigError naming the live holder. A claim whose holder is gone is taken over; one held by this very
    process (an ablation sweep trains its runs under its own claim) is used as it is."""
    run_dir = Path(run_dir)
    existed = run_dir.exists()
    mine = read_claim(run_dir)
    if mine and mine.get("host") == socket.gethostname() and mine.get("pid") == os.getpid():
        return
    try:
        claim = try_claim(run_dir)
    except OSError as err:
        raise ConfigError(
            f"cannot write to the run folder {run_dir} ({err.strerror or err}): give a writable "
            "--trainer.default_root_dir"
        ) from err
    if claim is None:
        raise ConfigError(
            f"{run_dir} is being written by another fit: {_describe(read_claim(run_dir))}. One run folder has one "
            "writer: wait for it to finish (then resume with --ckpt_path last), or use --trainer.default_root_dir "
            "<another folder>"
        )
    _held.append((claim, run_dir, existed))


def release_folders() -> None:
    """Release this process's run-folder claims; a folder that the claim alone created and that holds nothing else
    is removed again (a fit stopped by a bad option leaves nothing behind)."""
    while _held:
        claim, run_dir, existed = _held.pop()
        claim.release()
        if not existed:
            try:
                run_dir.rmdir()
            except OSError:
                pass  # not empty: the run wrote its files


def own_folder_of_config(config_files: list[Any], root: str | None, argv: list[str]) -> Path | None:
    """The folder of a run's own config.yaml given with --config, when the config names another default_root_dir
    (the folder was copied or moved) and the command line does not set one: that folder's files are the run's."""
    if any(a.split("=", 1)[0] == "--trainer.default_root_dir" for a in argv):
        return None
    for cfg_file in reversed(config_files or []):
        path = Path(str(getattr(cfg_file, "absolute", None) or cfg_file))
        if path.name != "config.yaml" or not (path.parent / "checkpoints").is_dir():
            continue
        folder = path.parent
        if root is None or Path(root).resolve() != folder.resolve():
            return folder
        return None
    return None


def new_evaluation_dir(
    root: Path, subcommand: str, ckpt_path: str, primary: bool, command: list[str] | None = None
) -> str:
    """A fresh `<root>/evaluations/<subcommand>-<checkpoint>-<time>[-n]` (created atomically: two evaluations started
    in the same second get two folders), holding evaluation.json with the exact command (`command`: the arguments
    after `python -m lit_vit`; default sys.argv's) and the checkpoint."""
    base = f"{subcommand}-{Path(ckpt_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if not primary:
        return base  # only rank 0 writes; the other ranks' loggers write nothing
    parent = Path(root) / "evaluations"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 1000):
            name = base if n == 1 else f"{base}-{n}"
            try:
                (parent / name).mkdir()
            except FileExistsError:
                continue
            ckpt = Path(ckpt_path)
            record = {
                "command": shlex.join(["python", "-m", "lit_vit", *(sys.argv[1:] if command is None else command)]),
                "cwd": os.getcwd(),
                "checkpoint": str(ckpt.resolve()),
                "checkpoint_bytes": ckpt.stat().st_size if ckpt.is_file() else None,
                "checkpoint_mtime": ckpt.stat().st_mtime if ckpt.is_file() else None,
                "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            (parent / name / "evaluation.json").write_text(json.dumps(record, indent=2) + "\n")
            return name
    except OSError as err:
        raise ConfigError(f"cannot write {parent} ({err.strerror or err}): give a writable run folder") from err
    raise ConfigError(f"{parent} has 999 evaluations named {base}*: remove some")


# -- the guard: which checkpoint a command uses, and whether a fit may write here ----------------------------------
# What a fit that stopped before its first logged step leaves behind (e.g. data checked at setup): nothing trained, so a
# rerun may write there again.
# claim.json: an ablation sweep's claim on the run folder (lit_vit.ablation.claims), taken before the run starts.
STARTUP_FILES = {"config.yaml", "hparams.yaml", "claim.json"}


def _is_nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(p.name not in STARTUP_FILES for p in path.iterdir())


def resolve_ckpt_path(
    subcommand: str, ckpt_path: str | None, run_dir: Path, pretrained: str | None = None
) -> str | None:
    """'last' / 'best' mean this run's checkpoints. A fit writes only into an empty folder or the run it resumes;
    validate / test / predict without --ckpt_path evaluate this run's best.ckpt, never random weights: when there is
    none, only a model that may evaluate its `pretrained` weights as they are (ViLT's zero-shot retrieval; the CLI
    passes them only for such a model, which checks its task heads are in the file) runs, and says so."""
    primary = is_primary_process()
    own = run_dir / "checkpoints"
    if ckpt_path is None and subcommand != "fit":
        if not (own / "best.ckpt").is_file() and pretrained is not None:
            if primary:
                print(
                    f"{subcommand}: no --ckpt_path and no {own / 'best.ckpt'}: evaluating the pretrained weights "
                    f"{pretrained} (model.init_args.pretrained) as they are, without fine-tuning",
                    file=sys.stderr,
                )
            return None
        if not (own / "best.ckpt").is_file():
            raise ConfigError(
                f"{subcommand} needs trained weights: no --ckpt_path given and {own / 'best.ckpt'} does not exist. "
                f"Give --ckpt_path best | last | <file.ckpt> (and --config <run dir>/config.yaml), or check "
                f"--trainer.default_root_dir (now {run_dir}); a ViLT module also evaluates "
                "--model.init_args.pretrained <weights> as they are (zero-shot)"
            )
        ckpt_path = "best"
        if primary:
            print(f"{subcommand}: no --ckpt_path given, using {own / 'best.ckpt'}", file=sys.stderr)
    if ckpt_path in ("last", "best"):
        path = own / f"{ckpt_path}.ckpt"
        if not path.is_file():
            raise ConfigError(
                f"--ckpt_path {ckpt_path}: no checkpoint at {path}. Check --trainer.default_root_dir (now {run_dir}) "
                "or start a new run without --ckpt_path"
            )
    elif ckpt_path is not None:
        path = Path(ckpt_path)
    else:
        path = None
    if subcommand == "fit" and primary and _is_nonempty_dir(run_dir):
        if path is None:
            held = own / "last.ckpt"
            what = (
                f"already holds a run ({held})"
                if held.is_file()
                else (f"is not empty ({', '.join(sorted(p.name for p in run_dir.iterdir())[:5])})")
            )
            raise ConfigError(
                f"{run_dir} {what}: a new fit writes only into an empty folder. Resume it with --ckpt_path last, or "
                f"start a new run with --trainer.default_root_dir <new dir> (or delete {run_dir})"
            )
        if path.resolve().parent != own.resolve():
            raise ConfigError(
                f"--ckpt_path {path} belongs to another run, and {run_dir} holds a run of its own: resuming would "
                f"overwrite it. Continue that checkpoint in a new folder with --trainer.default_root_dir <empty dir>, "
                f"or resume {run_dir}'s own run with --ckpt_path last"
            )
    return None if path is None else str(path)


def read_checkpoint(path: Path, run_dir: Path | None = None) -> dict[str, Any]:
    """A Lightning checkpoint read by `lit_vit.models.weights.read` (safe: weights_only=True), or an error that names
    the file and the fix: missing, empty, truncated, not a checkpoint (e.g. a bare weights file or a pickle of Python
    objects). `run_dir`: the run whose best.ckpt the error suggests instead."""
    best = run_dir / "checkpoints" / "best.ckpt" if run_dir is not None else None
    earlier = (
        f"resume from {best} or an earlier copy of the checkpoint"
        if best is not None and best.is_file() and best.resolve() != path.resolve()
        else "use another checkpoint of the run (best.ckpt, last.ckpt) or an earlier copy"
    )
    tensors, meta = weights.read(
        path,
        what="checkpoint",
        expect="a .ckpt file written by lit_vit",
        advice=f"{earlier}. lit_vit writes <run dir>/checkpoints/last.ckpt and best.ckpt",
        trusted=(),  # a lit_vit checkpoint holds tensors and plain containers only
    )
    if meta["format"] != "lightning":
        raise ConfigError(
            f"{path} is not a Lightning checkpoint (no state_dict / loop state), e.g. a bare weights file: to start "
            "from its weights use --model.init_args.pretrained <file> (and no --ckpt_path)"
        )
    return {**{k: v for k, v in meta.items() if k not in ("format", "nested", "path")}, "state_dict": tensors}


# Model options that may differ from the checkpoint's when resuming: they change neither the network nor the
# optimisation (pretrained is read only when a fit starts from scratch; compile is an execution detail).
RESUME_MAY_CHANGE = ("model.init_args.compile", "model.init_args.pretrained")
# Filled in from the data when the user leaves them unset.
FROM_DATA = ("model.init_args.num_classes", "model.init_args.class_names")


def model_differences(user_model: Any, hparams: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, user's value, checkpoint's value) for every model option set differently in the checkpoint's saved
    hyper-parameters; options the checkpoint does not record (e.g. added in a later lit_vit) are not compared."""
    hparams = {k: v for k, v in hparams.items() if k != lightning_compat.INSTANTIATOR_KEY}
    if lightning_compat.CLASS_PATH_KEY not in hparams:
        return []  # saved by a module built in Python, not by the CLI: nothing to compare against
    saved = {"class_path": hparams.pop(lightning_compat.CLASS_PATH_KEY), "init_args": hparams}
    mine, theirs = flatten(user_model, "model"), flatten(saved, "model")
    diffs = []
    for key in sorted(set(mine) & set(theirs)):
        if key in FROM_DATA and mine[key] is None:
            continue
        if mine[key] != theirs[key] and key not in RESUME_MAY_CHANGE:
            diffs.append((key, mine[key], theirs[key]))
    # a different backbone class: its options are not comparable, the class path says it all
    for key in [k for k, _, _ in diffs if k.endswith("class_path")]:
        diffs = [d for d in diffs if d[0] == key or not d[0].startswith(key.removesuffix("class_path"))]
    return diffs


# -- what writes the run's files ---------------------------------------------------------------------------------------
class RunLogger(Logger):
    """`<run dir>/metrics.csv` (no version_N folders), appended to when a run resumes, and hparams.yaml beside it.

    Lightning's CSVLogger deletes an existing metrics.csv and lets no subclass choose otherwise without private names;
    this logger writes the same file (one row per logging call: the metrics and `step`; a header that grows when new
    metrics appear, the earlier rows rewritten under it) with Lightning's public Logger API only. The sweep, `plot`
    and the resume logic read it."""

    def __init__(self, save_dir: str | Path, flush_logs_every_n_steps: int = 100) -> None:
        super().__init__()
        self._dir = os.fspath(save_dir)
        self.metrics_file_path = os.path.join(self._dir, "metrics.csv")
        self.flush_logs_every_n_steps = flush_logs_every_n_steps  # kept for the CSVLogger signature: rows are
        # written at every save(), which Lightning calls after every logging call
        self.hparams: dict[str, Any] = {}
        self._rows: list[dict[str, Any]] = []
        self._keys: list[str] | None = None  # read from an existing file at the first save

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def root_dir(self) -> str:
        return self._dir

    @property
    def log_dir(self) -> str:
        return self._dir

    @property
    def save_dir(self) -> str:
        return self._dir

    @property
    def experiment(self) -> "RunLogger":
        return self

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self.hparams.update(params)
        os.makedirs(self._dir, exist_ok=True)
        save_hparams_to_yaml(os.path.join(self._dir, "hparams.yaml"), self.hparams)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self._rows) if step is None else step
        self._rows.append(row)

    @rank_zero_only
    def save(self) -> None:
        if not self._rows:
            return
        exists = os.path.isfile(self.metrics_file_path)
        if self._keys is None:
            self._keys = []
            if exists:
                with open(self.metrics_file_path, newline="") as f:
                    self._keys = list(csv.DictReader(f).fieldnames or [])
        new = set().union(*self._rows) - set(self._keys)
        if new:
            self._keys = sorted({*self._keys, *new})
            if exists:  # a new column: the earlier rows are written again under the new header
                with open(self.metrics_file_path, newline="") as f:
                    earlier = list(csv.DictReader(f))
                self._write(earlier, "w")
                exists = True
        os.makedirs(self._dir, exist_ok=True)
        if not exists:
            self._write([], "w")
        self._write(self._rows, "a", header=False)
        self._rows = []

    def _write(self, rows: list[dict[str, Any]], mode: str, header: bool = True) -> None:
        with open(self.metrics_file_path, mode, newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self._keys or [])
            if header:
                writer.writeheader()
            writer.writerows(rows)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def drop_rows_from_step(self, step: int) -> None:
        """Drop rows logged at `step` or later: a run resumed from a checkpoint taken after `step` optimiser steps
        logs them again. (Lightning logs a row with the number of steps taken before it, so those rows stay.)"""
        self.save()
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames, list(reader)
        kept = [r for r in rows if not r.get("step") or int(r["step"]) < step]
        if len(kept) < len(rows):
            with open(self.metrics_file_path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields or [])
                writer.writeheader()
                writer.writerows(kept)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to `<file>.tmp` beside it, then renames it over the file (`os.replace`, atomic within a
    file system): a run killed while saving never leaves a truncated last.ckpt / best.ckpt.

    Lightning's own writer goes through a temporary file in the system's temp folder and `shutil.move`, which is a copy,
    not a rename, when that folder is on another file system than the run (e.g. a tmpfs /tmp)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        except BaseException as err:
            written = tmp.stat().st_size if tmp.is_file() else 0
            tmp.unlink(missing_ok=True)  # never leave a partial file; the previous checkpoint at `path` is intact
            if isinstance(err, OSError) or not isinstance(err, RuntimeError) or "write" not in str(err):
                raise
            # torch's archive writer reports a failed write as a RuntimeError without the OS error: a full disk is
            # the usual cause, said as such when the folder has no room left for what was being written
            free = shutil.disk_usage(path.parent).free
            if free > max(written, 1 << 20):
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from err


# errno values that mean "this location cannot take the file": a user's fix (space, permissions, another folder)
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def disk_error(err: BaseException | None) -> OSError | None:
    """The OSError behind `err` when it is a full, read-only or forbidden location (else None)."""
    found = find_in_chain(err, lambda e: isinstance(e, OSError) and e.errno in DISK_ERRNOS)
    return found if isinstance(found, OSError) else None


def disk_error_message(err: OSError) -> str:
    where = err.filename or "a file of the run"
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only"}.get(err.errno, err.strerror or str(err))  # fmt: skip
    return (
        f"cannot write {where}: {what} ({errno.errorcode.get(err.errno or 0, err.errno)}). Free space or fix the "
        "permissions and resume with --ckpt_path last (the last complete checkpoint is kept), or write the run "
        "elsewhere with --trainer.default_root_dir <folder>"
    )
