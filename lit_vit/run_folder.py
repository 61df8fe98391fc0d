"""The run folder's rules that the CLI applies before anything is written: one writer at a time, a config.yaml that is
read as a recipe of its own folder, evaluation folders that never collide, and file-system errors as one line.
"""

import errno
import json
import os
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

from lit_vit.ablation.claims import Claim, read_claim, try_claim
from lit_vit.errors import ConfigError


def is_primary_process() -> bool:
    """Global rank 0 of a multi-process launch (Lightning's launcher, torchrun, SLURM srun), or a single process: the
    one process that claims and writes a run folder's own files."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


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


# errno values that mean "this location cannot take the file": a user's fix (space, permissions, another folder)
DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}


def disk_error(err: BaseException | None) -> OSError | None:
    """The OSError behind `err` when it is a full, read-only or forbidden location (else None)."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, OSError) and err.errno in DISK_ERRNOS:
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def disk_error_message(err: OSError) -> str:
    where = err.filename or "a file of the run"
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exceeded",
            errno.EROFS: "the file system is read-only"}.get(err.errno, err.strerror or str(err))  # fmt: skip
    return (
        f"cannot write {where}: {what} ({errno.errorcode.get(err.errno or 0, err.errno)}). Free space or fix the "
        "permissions and resume with --ckpt_path last (the last complete checkpoint is kept), or write the run "
        "elsewhere with --trainer.default_root_dir <folder>"
    )
