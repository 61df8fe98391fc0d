"""Claims: which sweep process trains which run, when several share one sweep folder.

A process trains a run only while it holds the run's claim, `<run dir>/claim.json`, created atomically (O_EXCL) with
its host, pid and start time. The holder refreshes the file's modification time every `HEARTBEAT_S` seconds. A
claim is stale, and taken over by the next process that looks, when its holder is gone: on the same host its pid no
longer exists; on another host (which cannot see our pids) its heartbeat is older than `STALE_AFTER_S`. Taking over
renames the stale file away first (atomic: of two processes racing for it, one rename fails), so a run is never
trained by two processes at once, and a run whose holder was killed is resumed from its last.ckpt by the next one.
"""

import json
import os
import socket
import threading
import time
from pathlib import Path

CLAIM_FILE = "claim.json"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


def pid_alive(pid: object) -> bool:
    """Whether a process with this pid exists on this host (False for a pid that is not a number)."""
    try:
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_claim(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / CLAIM_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def is_stale(run_dir: Path, claim: dict | None = None, now: float | None = None) -> bool:
    """Whether the claim on `run_dir` belongs to a process that is gone (see the module docstring)."""
    path = Path(run_dir) / CLAIM_FILE
    claim = claim if claim is not None else read_claim(run_dir)
    if claim is None:
        return path.exists()  # unreadable (written half by a killed process): stale
    if claim.get("host") == socket.gethostname():
        return not pid_alive(claim.get("pid", -1))
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > STALE_AFTER_S


class Claim:
    """A held claim: refreshed by a daemon thread until `release()`."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / CLAIM_FILE
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        self._stop.set()
        self.path.unlink(missing_ok=True)


def try_claim(run_dir: Path) -> Claim | None:
    """The claim on `run_dir` if this process gets it (taking over a stale one), else None."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CLAIM_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not is_stale(run_dir):
                return None
            try:  # move the stale claim away; losing this race means another process is taking it over
                os.rename(path, run_dir / f"{CLAIM_FILE}.stale.{os.getpid()}")
            except FileNotFoundError:
                return None
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}, f)
        for old in run_dir.glob(f"{CLAIM_FILE}.stale.*"):
            old.unlink(missing_ok=True)
        return Claim(run_dir)
    return None
