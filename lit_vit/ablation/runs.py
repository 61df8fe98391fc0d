"""Training a sweep's runs in this process: each one an ordinary `LitViTCLI` fit of its own config, under its claim.

A run with `done.json` is skipped, a run with `checkpoints/last.ckpt` resumes from it, any other starts from scratch;
after the fit its results row goes to `done.json` (written last) and the sweep's `results.csv` is refreshed. With
claims (one process per run) a run is trained only under its claim (lit_vit.ablation.claims), so several sweep
processes (workers, hosts) can share the folder; under DDP every rank trains every run and rank 0 writes.
"""

import os
import shutil
import signal
import socket
import sys
import warnings
from functools import partial
from pathlib import Path

from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_vit.ablation.claims import CLAIM_FILE, Claim, try_claim
from lit_vit.ablation.plan import Run
from lit_vit.ablation.results import collect, machine_info, summarise_run, write_done, write_results
from lit_vit.callbacks.progress import RunProgress, read_progress, write_progress
from lit_vit.callbacks.resume import stopped_by
from lit_vit.callbacks.throughput import ThroughputLogger
from lit_vit.cli import LitViTCLI


class SweepInterrupted(Exception):
    """Ctrl-C (SIGINT) stopped a run of the sweep; its last.ckpt is saved and the same command resumes it."""


class RunFolderRemoved(Exception):
    """A run's folder was removed while it trained (Lightning recreates folders it writes into, so the run may even
    end normally, with a partial metrics.csv and no config.yaml)."""


def _removed(run: Run, claim: Claim | None) -> bool:
    """Whether the folder `run` started in is gone: no folder, or a new one without the claim (or config.yaml) that
    the started run had put there."""
    if not run.dir.is_dir():
        return True
    return not claim.path.exists() if claim is not None else not (run.dir / "config.yaml").is_file()


def train_runs(runs: list[Run], states: list[str], primary: bool, claims: bool) -> list[Run]:
    """Train the runs in order, skipping finished ones (and, with `claims`, ones another process holds). Returns the
    runs that failed here because their folder was removed while they trained (the others go on; the failure is in
    the run's progress.json); any other error stops the sweep."""
    sweep_dir = runs[0].dir.parent.parent if runs else Path(".")
    order = list(dict.fromkeys(r.variant.name for r in runs))
    lost = []
    for run, state in zip(runs, states):
        # every process of a DDP sweep decides from the same files, read before this run starts: their states agree
        if state == "finished":
            continue
        claim = try_claim(run.dir) if claims else None
        if claims and claim is None:
            continue  # another process trains it
        try:
            state = run.state  # read again under the claim: another process may have finished it meanwhile
            if state != "finished":
                train_run(run, state, primary, partial(_removed, run, claim))
        except SIGTERMException:
            if stopped_by["signal"] == signal.SIGINT:  # Ctrl-C: ExactResume stopped the run at a step boundary
                raise SweepInterrupted() from None
            print(f"run {run.label} stopped by SIGTERM; the sweep stops here", file=sys.stderr)
            raise
        except SystemExit as err:
            if isinstance(err.__context__, KeyboardInterrupt):  # Lightning's answer to Ctrl-C: exit(1), last.ckpt saved
                raise SweepInterrupted() from None
            raise
        except Exception as err:
            if not isinstance(err, RunFolderRemoved) and not _removed(run, claim):
                raise
            cause = "" if isinstance(err, RunFolderRemoved) else f" ({type(err).__name__}: {_first_line(err)})"
            reason = f"its folder {run.dir} was removed while it trained{cause}; it starts over on the rerun"
            if primary:  # what Lightning recreated is a partial run: cleared, so the rerun does not resume it
                shutil.rmtree(run.dir, ignore_errors=True)
                run.dir.mkdir(parents=True, exist_ok=True)  # the failure is reported where every reader looks
                write_progress(run.dir, state="failed", error=reason, pid=os.getpid(), host=socket.gethostname())
            lost.append(run)
            continue
        finally:
            if claim is not None:
                claim.release()
        if primary:
            write_results(sweep_dir, collect(sweep_dir, order))
    return lost


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def train_run(run: Run, state: str, primary: bool = True, removed=lambda: False) -> None:
    if state == "new" and primary and run.dir.is_dir():
        # leftovers of a run killed before its first checkpoint (no checkpoint, no done.json: nothing to resume or
        # keep): start clean, as a new fit writes only into an empty folder (this process's claim stays)
        for path in run.dir.iterdir():
            if path.name != CLAIM_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    # "last" only when there is one: LitViTCLI resolves it to <run dir>/checkpoints/last.ckpt
    args = {"fit": run.args("last" if state == "resume" else None)}
    # the run's throughput and wall time, from its own ThroughputLogger when the config has one (no per-step syncs)
    configured = any("ThroughputLogger" in str(getattr(c, "class_path", c)) for c in run.config.trainer.callbacks or [])
    extra = [RunProgress()] + ([] if configured else [ThroughputLogger()])
    # sys.argv stays the sweep's own command line: Lightning's DDP launcher starts the other ranks with it, and
    # they run the same sweep (LightningCLI warns when it gets args while sys.argv holds others: expected here)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
        cli = LitViTCLI(args=args, callbacks=extra)
    trainer = cli.trainer
    if removed():
        raise RunFolderRemoved()
    if trainer.state.status != TrainerStatus.FINISHED or trainer.interrupted:
        raise RuntimeError(f"run {run.label} did not finish ({trainer.state.status}); rerun the command to resume it")
    if not primary:
        return
    speed = next(c for c in trainer.callbacks if isinstance(c, ThroughputLogger))
    row = summarise_run(
        run.dir,
        run.variant.name,
        run.seed,
        steps=trainer.global_step,
        params=sum(p.numel() for p in cli.model.parameters()),
        train_images_per_s=round(speed.images_per_second, 1),
        wall_s=round(speed.wall_seconds, 1),
        overrides=run.variant.overrides,
        machine=machine_info(),  # where it trained: report.md names it, also when `plot` runs elsewhere
    )
    write_done(run.dir, row)
    write_progress(run.dir, state="done")


def failure(run: Run) -> str | None:
    """Why `run` failed, from its progress.json (None when it did not fail)."""
    progress = read_progress(run.dir) or {}
    return progress.get("error") if progress.get("state") == "failed" else None
