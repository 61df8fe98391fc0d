"""`python -m lit_vit sweep --config <yaml with an ablation: section>` (and `fit --config` of such a yaml, which
`lit_vit.cli.main` routes here): every variant x seed as an ordinary lit_vit run in
`<default_root_dir>/<variant>/seed=<n>/`.

The sweep parses its config once with `LitViTCLI(run=False)` (whose parser is the fit parser), plans and validates
every run before anything is written (lit_vit.ablation.plan), writes the resolved config to `<sweep dir>/sweep.yaml`
(a rerun must resolve to the same), trains the runs here (lit_vit.ablation.runs) or in `ablation.workers` processes
(lit_vit.ablation.workers) while showing their progress (lit_vit.ablation.progress), and at the end writes
results.csv, the plots and report.md (lit_vit.ablation.plots) and prints the results table (lit_vit.ablation.summary).
"""

import os
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path

from lightning import Trainer

from lit_vit.ablation.claims import is_stale, read_claim
from lit_vit.ablation.config import Ablation
from lit_vit.ablation.plan import (
    SWEEP_CONFIG,
    Run,
    check_rerun,
    plan_runs,
    single_process,
    validate_runs,
)
from lit_vit.ablation.progress import SweepProgress
from lit_vit.ablation.results import collect, write_results
from lit_vit.ablation.runs import SweepInterrupted, failure, train_runs
from lit_vit.ablation.summary import print_summary
from lit_vit.ablation.workers import Worker, start_workers, wait_for_workers, worker_start
from lit_vit.callbacks.progress import WORKER_ENV, read_progress
from lit_vit.cli import LitViTCLI
from lit_vit.errors import ConfigError
from lit_vit.files import write_text_atomic
from lit_vit.processes import torch_single_threaded
from lit_vit.run_folder import is_primary_process

SWEEP_HELP = """\
  Runs the config's ablation: section (variants x seeds), each run an ordinary
  fit in <default_root_dir>/<variant>/seed=<n>/; rerun the same command to
  resume (finished runs are skipped). `fit --config` of the same file does the
  same. Progress: a live view on a terminal, one line per event otherwise
  (--ablation.quiet true for none); results.csv, plots and report.md land in
  <default_root_dir>.
"""


class SweepCLI(LitViTCLI):
    """The sweep's config: fit's options (with run=False LightningCLI's parser is the fit parser) plus fit's own
    ckpt_path; it parses and checks, and instantiates nothing (each run builds its own classes)."""

    def __init__(self, args: list[str] | None) -> None:
        super().__init__(args=args, run=False)

    def init_parser(self, **kwargs):
        return super().init_parser(**{**kwargs, "prog": "python -m lit_vit sweep", "epilog": SWEEP_HELP})

    def add_arguments_to_parser(self, parser) -> None:
        super().add_arguments_to_parser(parser)
        # what LightningCLI adds to its fit subcommand: a sweep's config is a fit config (sweep.yaml holds them too)
        skip = {"model", "train_dataloaders", "val_dataloaders", "datamodule"}
        parser.add_method_arguments(Trainer, "fit", skip=skip)

    def instantiate_classes(self) -> None:
        pass  # each run builds its own model, data and trainer


def main(argv: list[str]) -> None:
    """`python -m lit_vit sweep <options>`; Ctrl-C ends it with one line and exit status 130."""
    with interrupts_exit_130():
        with warnings.catch_warnings():  # Lightning warns when args are given while sys.argv holds others: ours are
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
            cli = SweepCLI(argv)
        if cli.config.get("ablation") is None:
            raise ConfigError(
                "this config has no ablation: section (variants x seeds); add one (see experiments/ablation_pos.yaml) "
                "or train a single run with python -m lit_vit fit --config <yaml>"
            )
        run_sweep(cli)


@contextmanager
def interrupts_exit_130() -> Iterator[None]:
    """Ctrl-C (or a run stopped by it) ends the sweep, or a worker, with one line and exit status 130."""
    try:
        yield
    except (KeyboardInterrupt, SweepInterrupted):
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def work_as_worker(runs: list[Run], claims: bool, quiet: bool, threads: int) -> None:
    """A forked worker's work (lit_vit.ablation.workers): what `sweep --ablation.workers 1` does in a new process,
    on the runs this process planned and checked, with the worker's torch threads."""
    import torch

    torch.set_num_threads(threads)
    for run in runs:
        run.config.num_threads = threads  # as the new process's --num_threads: each run's fit sets it again
    with interrupts_exit_130():
        with SweepProgress(runs, SweepProgress.mode_for(quiet), {os.getpid(): int(os.environ[WORKER_ENV])}):
            train_runs(runs, [run.state for run in runs], True, claims)


def run_sweep(cli: SweepCLI) -> None:
    cfg = cli.config
    ablation = Ablation.from_config(cfg.ablation)
    if cfg.get("ckpt_path") not in (None, "last"):
        raise ConfigError(
            f"--ckpt_path {cfg.ckpt_path} cannot be used with an ablation sweep: each run resumes from its own "
            "<run dir>/checkpoints/last.ckpt; rerun the same command (optionally with --ckpt_path last)"
        )
    primary = is_primary_process()
    sweep_dir = Path(cfg.trainer.default_root_dir or "runs/default")
    base_cfg = cfg.clone()
    base_cfg.ckpt_path = None
    runs = plan_runs(ablation, sweep_dir, base_cfg)
    dumped = cli.parser.dump(base_cfg, skip_none=False)
    check_rerun(sweep_dir, runs, dumped)
    claims = single_process(cfg.trainer)
    if ablation.workers > 1 and not claims:
        raise ConfigError(
            f"ablation.workers {ablation.workers} runs single-process runs side by side; this config trains each "
            "run on several processes (devices / num_nodes / WORLD_SIZE): set workers: 1 for multi-device runs"
        )
    if ablation.workers > 1:
        worker_start()  # a bad LIT_VIT_WORKER_START stops here, before anything is written
    # before anything is written: a sweep that cannot run leaves no folder behind; single-threaded, as workers fork
    with torch_single_threaded() if ablation.workers > 1 else nullcontext():
        validate_runs(cli.parser, runs)
    if primary:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(sweep_dir / SWEEP_CONFIG, dumped)  # other processes may read it now (torchrun)

    states = [run.state for run in runs]
    say = print if primary else (lambda *a, **k: None)
    say(
        f"ablation sweep {sweep_dir}: {len(ablation.variants)} variants x {len(ablation.seeds)} seeds = {len(runs)} "
        f"runs: {states.count('finished')} finished (skipped), {states.count('resume')} to resume, "
        f"{states.count('new')} to start" + (f"; {ablation.workers} workers" if ablation.workers > 1 else ""),
        file=sys.stderr,
    )
    mode = SweepProgress.mode_for(ablation.quiet) if primary else "quiet"
    failed_workers: list[Worker] = []
    todo = len(runs) - states.count("finished")  # none on a rerun of a finished sweep: no worker to start
    if ablation.workers > 1 and todo:
        work = partial(work_as_worker, runs, claims, ablation.quiet)
        workers = start_workers(sweep_dir, ablation.workers, cfg.get("num_threads"), work, count=todo)
        with SweepProgress(runs, mode, {w.process.pid: w.index for w in workers}, parallel=len(workers)):
            failed_workers = wait_for_workers(workers)
        if failed_workers and all(w.process.returncode == 128 + signal.SIGINT for w in failed_workers):
            # a terminal's Ctrl-C reached the workers (the whole process group) and each saved its run and exited
            # 130; this process can miss its own KeyboardInterrupt (the signal landing between two polls of a
            # finished wait): the sweep was interrupted all the same
            raise SweepInterrupted()
    else:
        worker = os.environ.get(WORKER_ENV)
        with SweepProgress(runs, mode, {os.getpid(): int(worker) if worker else None}):
            train_runs(runs, states, primary, claims)
        if worker:
            return  # the process that started the workers writes the results
    if primary:
        finish(sweep_dir, runs, failed_workers)


def _reason(run: Run, failed_workers: list[Worker]) -> str:
    """Why an unfinished run is not finished, in a few words."""
    reason = failure(run)
    if reason:
        return reason
    holder = (read_progress(run.dir) or {}).get("pid") or (read_claim(run.dir) or {}).get("pid")
    worker = next((w for w in failed_workers if w.process.pid == holder), None)
    if worker is not None:
        return f"worker {worker.index} exit {worker.process.returncode}: {worker.last_error()}"
    return "not trained"


def finish(sweep_dir: Path, runs: list[Run], failed_workers: list[Worker]) -> None:
    """results.csv always; the plots, report.md and the table when every run is finished; otherwise say which runs
    did not finish and why (an error, unless other processes are still training them)."""
    order = list(dict.fromkeys(r.variant.name for r in runs))
    rows = collect(sweep_dir, order)
    write_results(sweep_dir, rows)
    unfinished = [r for r in runs if r.state != "finished"]
    held = [r for r in unfinished if read_claim(r.dir) and not is_stale(r.dir)]
    if unfinished and len(held) == len(unfinished):
        holders = ", ".join(f"{r.label} ({read_claim(r.dir).get('host')}:{read_claim(r.dir).get('pid')})" for r in held)
        print(
            f"{len(held)} run(s) not finished here, being trained by other processes: {holders}. The process that "
            f"finishes the last run writes results.csv and the plots (or `python -m lit_vit plot {sweep_dir}`)",
            file=sys.stderr,
        )
        return
    if unfinished:
        listed = "; ".join(f"{r.label} ({_reason(r, failed_workers)})" for r in unfinished if r not in held)
        logs = f" (logs in {sweep_dir / 'logs'})" if failed_workers else ""
        raise ConfigError(
            f"{len(unfinished) - len(held)} run(s) of the sweep did not finish: {listed}{logs}; fix the cause and "
            "rerun the same command: finished runs are kept, the others resume or start"
        )
    from lit_vit.ablation.plots import plot_sweep  # matplotlib: only when there is something to draw

    written = plot_sweep(sweep_dir)
    print_summary(rows, order)
    print(f"results: {sweep_dir / 'results.csv'}; plots: {', '.join(p.name for p in written)}", file=sys.stderr)
