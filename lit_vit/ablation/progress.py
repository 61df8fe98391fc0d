"""What the user sees while a sweep trains, read from the run folders whoever trains them (this process or workers).

A thread polls every run folder (done.json, progress.json written by lit_vit.callbacks.RunProgress, claim.json) and
shows, on a terminal, a live view: one line per run (variant, seed, state, epoch x/y, last val top-1, elapsed) and an
overall bar with an ETA from the finished runs' times; otherwise one plain line per event (a run started, every few
epochs, done with its numbers, failed with its error), so a log file tells the story. `ablation.quiet` shows nothing.
"""

import logging
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from lit_vit.ablation.claims import pid_alive, read_claim
from lit_vit.ablation.plan import Run
from lit_vit.ablation.results import read_done
from lit_vit.callbacks.progress import read_progress


def _pct(value: Any) -> str:
    return f"{100 * value:.2f} %" if isinstance(value, int | float) else "-"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


@dataclass
class Status:
    state: str  # queued / starting / running / done / failed / elsewhere
    where: str = ""  # "worker 1", "host:pid"
    epoch: int | None = None
    max_epochs: int | None = None
    acc1: float | None = None
    elapsed: float | None = None
    started: float | None = None  # the attempt's start (progress.json), to tell attempts apart
    resumed: int = 0
    done: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    mine: bool = True  # trained by this sweep's processes (else by another sweep process on the folder)


class SweepProgress:
    """Shows the progress of `runs`. `mine`: pid -> worker index (None: this process) of the processes this sweep
    started; runs trained by other processes on the folder are shown as such and get no event lines."""

    def __init__(self, runs: list[Run], mode: str, mine: dict[int, int | None], parallel: int = 1, poll_s: float = 0.5):
        self.runs, self.mode, self.mine, self.parallel, self.poll_s = runs, mode, mine, parallel, poll_s
        self.t0 = time.time()
        self.seen: dict[str, Any] = {}  # events already told, by key
        self.status = [self.read(r) for r in runs]
        self.finished_before = {r.label for r, s in zip(runs, self.status) if s.state == "done"}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Live | None = None
        self._levels: dict[str, int] = {}

    @staticmethod
    def mode_for(quiet: bool) -> str:
        return "quiet" if quiet else "live" if sys.stderr.isatty() else "lines"

    def where(self, pid: Any, host: Any = None) -> str | None:
        """'worker i' / 'this process' for this sweep's processes, else None."""
        if host not in (None, socket.gethostname()) or not isinstance(pid, int) or pid not in self.mine:
            return None
        return "this process" if self.mine[pid] is None else f"worker {self.mine[pid]}"

    def read(self, run: Run) -> Status:
        done = read_done(run.dir)
        progress = read_progress(run.dir) or {}
        now = time.time()
        where = self.where(progress.get("pid"), progress.get("host"))
        attempt = dict(
            where=where or f"{progress.get('host')}:{progress.get('pid')}",
            epoch=progress.get("epoch"),
            max_epochs=progress.get("max_epochs"),
            acc1=progress.get("val_acc1"),
            started=progress.get("started"),
            resumed=progress.get("resumed") or 0,
            mine=where is not None or not progress,
        )
        if done is not None:
            return Status("done", **attempt | {"epoch": done.get("epochs")}, elapsed=done.get("wall_s"), done=done)
        if progress.get("state") == "failed" and (progress.get("updated") or 0) >= self.t0:
            return Status("failed", **attempt, error=progress.get("error") or "")
        if progress.get("state") == "running" and pid_alive(progress.get("pid")):
            state = "running" if where else "elsewhere"
            return Status(state, **attempt, elapsed=now - (progress.get("started") or now))
        claim = read_claim(run.dir)
        if claim and pid_alive(claim.get("pid")):
            mine = self.where(claim.get("pid"), claim.get("host"))
            holder = mine or f"{claim.get('host')}:{claim.get('pid')}"
            return Status("starting" if mine else "elsewhere", where=holder, mine=mine is not None)
        resume = (run.dir / "checkpoints" / "last.ckpt").is_file()
        return Status("queued", where="resumes from last.ckpt" if resume else "")

    # events (plain lines)

    def _line(self, i: int, text: str) -> None:
        run = self.runs[i]
        print(f"run {i + 1}/{len(self.runs)} {run.label}: {text}", file=sys.stderr, flush=True)

    def _once(self, key: Any) -> bool:
        if key in self.seen:
            return False
        self.seen[key] = True
        return True

    def events(self, i: int, s: Status) -> None:
        label = self.runs[i].label
        if label in self.finished_before or s.state in ("queued", "starting"):
            return
        if s.state == "elsewhere" or not s.mine:
            if self._once((label, "elsewhere")):
                self._line(i, f"trained by {s.where}")
            return
        if s.started is not None and s.started >= self.t0 - 1 and self._once((label, "start", s.started)):
            how = f"resuming at epoch {s.epoch}/{s.max_epochs}" if s.resumed else "new"
            self._line(i, f"started on {s.where} ({how})")
        if s.state == "running" and s.epoch and s.max_epochs and 0 < s.epoch < s.max_epochs:
            every = max(1, s.max_epochs // 5)  # about five lines a run
            if s.epoch % every == 0 and self._once((label, "epoch", s.epoch)):
                self._line(i, f"epoch {s.epoch}/{s.max_epochs}, val top-1 {_pct(s.acc1)}, {_duration(s.elapsed or 0)}")
        if s.state == "done" and self._once((label, "done")):
            d = s.done
            self._line(
                i,
                f"done in {_duration(d.get('wall_s') or 0)}: final val top-1 {_pct(d.get('final_val_acc1'))}, "
                f"best {_pct(d.get('best_val_acc1'))} (epoch {d.get('best_epoch')}), {d.get('steps')} steps",
            )
        if s.state == "failed" and self._once((label, "failed", s.error)):
            self._line(i, f"failed: {s.error}")

    # the live view

    def eta(self) -> float | None:
        times = [s.done.get("wall_s") for r, s in zip(self.runs, self.status) if s.state == "done" and s.done]
        times = [t for t in times if t]
        if not times:
            return None
        mean = sum(times) / len(times)
        left = sum(max(mean - (s.elapsed or 0), 0) for s in self.status if s.state not in ("done", "failed"))
        return left / max(1, self.parallel)

    def render(self) -> Group:
        table = Table(box=None, pad_edge=False, show_edge=False)
        for column in ("variant", "seed", "state", "epoch", "val top-1", "elapsed"):
            table.add_column(column, no_wrap=True, justify="left" if column in ("variant", "state") else "right")
        style = {"done": "green", "failed": "red", "running": "cyan", "starting": "cyan"}
        for run, s in zip(self.runs, self.status):
            state = {"running": f"running on {s.where}", "starting": f"starting on {s.where}"}.get(s.state, s.state)
            state = {"elsewhere": f"trained by {s.where}", "queued": f"queued{f' ({s.where})' if s.where else ''}"}.get(
                s.state, state
            )
            if s.state == "running" and s.resumed:
                state += " (resumed)"
            if s.state == "failed":
                state = f"failed: {s.error[:80]}"
            epoch = f"{s.epoch}/{s.max_epochs}" if s.epoch is not None and s.max_epochs else "-"
            elapsed = _duration(s.elapsed) if s.elapsed is not None else "-"
            acc1 = s.done.get("final_val_acc1") if s.done else s.acc1
            table.add_row(run.variant.name, str(run.seed), Text(state, style=style.get(s.state, "")), epoch, _pct(acc1),
                          elapsed)  # fmt: skip
        done = sum(s.state == "done" for s in self.status)
        eta = self.eta()
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=len(self.runs), completed=done, width=40),
            f"{done}/{len(self.runs)} runs done, {_duration(time.time() - self.t0)} elapsed"
            + (f", about {_duration(eta)} left" if eta is not None else ""),
        )
        return Group(table, bar)

    # running

    def poll(self) -> None:
        self.status = [self.read(r) for r in self.runs]
        if self.mode == "lines":
            for i, s in enumerate(self.status):
                self.events(i, s)
        elif self._live is not None:
            self._live.update(self.render())

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except OSError:  # a folder changing under the reader: the next poll sees it settled
                pass

    def __enter__(self) -> "SweepProgress":
        if self.mode == "quiet":
            return self
        if self.mode == "live":
            # Lightning's INFO lines ("GPU available", "Seed set to") would tear the view of runs in this process
            for name in ("lightning.pytorch", "lightning.fabric"):
                self._levels[name] = logging.getLogger(name).level
                logging.getLogger(name).setLevel(logging.WARNING)
            self._live = Live(self.render(), console=Console(stderr=True), refresh_per_second=2)
            self._live.start()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        try:
            self.poll()  # the last events, e.g. the run that finished since the last poll
        except OSError:
            pass
        if self._live is not None:
            self._live.stop()
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
