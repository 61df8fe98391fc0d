"""Runs an ablation: every variant x seed as an ordinary lit_vit run in `<default_root_dir>/<variant>/seed=<n>/`.

`python -m lit_vit fit --config <yaml with an ablation: section>` lands here (LitViTCLI hands over). The sweep

1. writes the resolved config to `<sweep dir>/sweep.yaml` (a rerun must resolve to the same config, see
   `check_rerun`) and derives each run's config from the parsed one, never from text: a clone with the variant's
   overrides, `seed_everything <n>` (and `data.init_args.seed <n>` when the data module has a seed) and
   `trainer.default_root_dir <sweep dir>/<variant>/seed=<n>`, handed to LightningCLI as a dict;
2. validates every run before the first one starts: unknown override keys, values the parser rejects, models
   that cannot be built (e.g. sincos_2d with a width not divisible by 4) and missing data (each variant's data
   module runs prepare_data and reads its class list, on local rank 0) are ConfigErrors naming the variant;
3. runs them one after the other in this process: a run with `done.json` is skipped, a run with
   `checkpoints/last.ckpt` resumes from it (`--ckpt_path last`), any other starts from scratch; after fit, the
   results row is written to `done.json` and `results.csv` is refreshed. A single-process run is trained only under
   its claim (lit_vit.ablation.claims), so several sweep processes can share the folder; `ablation.workers` starts
   such processes on this machine. Under DDP / torchrun / srun every rank trains every run and rank 0 writes;
4. draws the plots (lit_vit.ablation.plots) when all runs are finished.
"""

import difflib
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console
from rich.table import Table

from lit_vit.ablation.claims import CLAIM_FILE, read_claim, try_claim
from lit_vit.ablation.config import Ablation, Variant
from lit_vit.ablation.results import (
    collect,
    fewshot_columns,
    mean_std,
    read_done,
    run_dir,
    summarise_run,
    write_done,
    write_results,
)
from lit_vit.callbacks.throughput import ThroughputLogger
from lit_vit.cli_parser import condense
from lit_vit.config_diff import describe, differences, flatten
from lit_vit.errors import ConfigError

SWEEP_CONFIG = "sweep.yaml"


@dataclass
class Run:
    variant: Variant
    seed: int
    dir: Path
    config: Any  # the run's fit config (a jsonargparse Namespace), derived from the sweep's

    @property
    def label(self) -> str:
        return f"{self.variant.name} seed={self.seed}"

    @property
    def state(self) -> str:
        if read_done(self.dir) is not None:
            return "finished"
        return "resume" if (self.dir / "checkpoints" / "last.ckpt").is_file() else "new"


def _leaf_keys(cfg, prefix: str = "") -> list[str]:
    keys = []
    for key, value in vars(cfg).items():
        full = f"{prefix}{key}"
        keys.append(full)
        if hasattr(value, "__dict__") and type(value).__name__ == "Namespace":
            keys += _leaf_keys(value, full + ".")
    return keys


def _check_key(key: str, variant: Variant, base_cfg) -> None:
    if key in base_cfg:
        return
    keys = _leaf_keys(base_cfg)
    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(
        f"ablation variant {variant.name!r} overrides {key!r}, which is not a key of this config; {hint}"
        "write keys in full as --print_config shows them (e.g. model.init_args.backbone.init_args.pos_embed, "
        "model.init_args.lr) and fix the variant's overrides"
    )


@contextmanager
def _raising(*parsers) -> Iterator[None]:
    """Parser errors raise instead of exiting, so they become ConfigErrors naming the variant."""
    before = [p.exit_on_error for p in parsers]
    for p in parsers:
        p.exit_on_error = False
    try:
        yield
    finally:
        for p, flag in zip(parsers, before):
            p.exit_on_error = flag


def plan_runs(ablation: Ablation, sweep_dir: Path, base_cfg) -> list[Run]:
    """Every run's config, seed-major (all variants of the first seed first, so a partial sweep compares)."""
    has_data_seed = "data.init_args.seed" in base_cfg
    runs = []
    for seed in ablation.seeds:
        for variant in ablation.variants:
            rdir = run_dir(sweep_dir, variant.name, seed)
            cfg = base_cfg.clone()
            cfg.ablation, cfg.ckpt_path = None, None
            for key, value in variant.overrides.items():
                _check_key(key, variant, base_cfg)
                cfg[key] = value
            cfg["trainer.default_root_dir"] = str(rdir)
            cfg.seed_everything = seed
            if has_data_seed and "data.init_args.seed" not in variant.overrides:
                cfg["data.init_args.seed"] = seed
            runs.append(Run(variant, seed, rdir, cfg))
    return runs


def run_args(run: Run, ckpt_path: str | None = None) -> dict[str, Any]:
    """The `args` of LightningCLI for one run: its fit config as a dict (no --config file in between)."""
    cfg = run.config.clone()
    cfg.ckpt_path = ckpt_path
    values = cfg.as_dict()
    values.pop("config", None)  # the sweep's --config file list: the values are all here
    return {"fit": values}


def validate_runs(cli, runs: list[Run]) -> None:
    """Parse every run's config, build each variant's model and data module once and check that its data is
    there (prepare_data may download or extract it, as Lightning would at the start of the run); nothing is trained."""
    # private: LightningCLI keeps the fit subcommand's parser only in this attribute (no public accessor, and
    # jsonargparse exposes a parser's subcommand parsers only through private names too); it instantiates one run's
    # classes (without a Trainer) and makes its errors raise instead of exiting
    fit_parser = cli._subcommand_parsers["fit"]
    built: set[str] = set()
    for run in runs:
        with _raising(cli.parser, fit_parser):
            try:
                cfg = cli.parser.parse_object(run_args(run))
            except (ArgumentError, TypeError, ValueError) as err:
                raise ConfigError(
                    f"ablation variant {run.variant.name!r} (seed {run.seed}): its overrides "
                    f"{run.variant.overrides} do not parse: {condense(str(err))}. Fix the variant's values"
                ) from err
        if run.variant.name in built:
            continue
        try:
            data = fit_parser.instantiate_classes(cfg.fit).data
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:  # one process per machine touches the files
                data.prepare_data()
                getattr(data, "class_names", None)  # image folders: the train split and its class folders exist
        except ValueError as err:  # a ConfigError, or jsonargparse's ValueError around one raised by a constructor
            cause = err
            while cause is not None and not isinstance(cause, ConfigError):
                cause = cause.__cause__ or cause.__context__
            raise ConfigError(f"ablation variant {run.variant.name!r}: {cause or err}") from err
        built.add(run.variant.name)


def is_primary_process() -> bool:
    """Global rank 0 of a multi-process launch (Lightning's launcher, torchrun, SLURM srun), or a single process: the
    one process that plans, writes the sweep's files and plots; every process trains every run."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


# Options a rerun may change without changing any number a finished run produced.
RERUN_MAY_CHANGE = (
    "num_threads",
    "ckpt_path",
    "checkpoint_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


def check_rerun(sweep_dir: Path, runs: list[Run], new_config: str) -> None:
    """A rerun must resolve to the config its runs used (sweep.yaml); new seeds and new variants may be added."""
    path = sweep_dir / SWEEP_CONFIG
    started = [r for r in runs if r.state != "new"]
    if not path.is_file() or not started:
        return
    old, new = yaml.safe_load(path.read_text()) or {}, yaml.safe_load(new_config) or {}
    known = set(flatten(old))  # options added to lit_vit after the sweep was written are not differences
    diffs = [d for d in differences(new, old, ignore=(*RERUN_MAY_CHANGE, "ablation.")) if d[0] in known]
    old_variants = {v["name"]: v.get("overrides") or {} for v in (old.get("ablation") or {}).get("variants") or []}
    for v in (new.get("ablation") or {}).get("variants") or []:
        if v["name"] in old_variants and (v.get("overrides") or {}) != old_variants[v["name"]]:
            diffs.append((f"ablation variant {v['name']} overrides", v.get("overrides"), old_variants[v["name"]]))
    if diffs:
        raise ConfigError(
            f"{path} holds the config that {len(started)} run(s) of this sweep used, and this command differs: "
            f"{describe(diffs, 'now', 'in sweep.yaml')}. Rerun with the sweep's values to resume it (new seeds and "
            "new variants may be added), or start a new sweep with --trainer.default_root_dir <new folder>"
        )


def run_sweep(cli) -> None:
    """The sweep of `cli`'s fit config (LitViTCLI calls this instead of fitting when `ablation` is set)."""
    cfg = cli.config["fit"]
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
    # private: the fit subcommand's parser, as in validate_runs (no public accessor)
    dumped = cli._subcommand_parsers["fit"].dump(base_cfg, skip_none=False)
    check_rerun(sweep_dir, runs, dumped)
    validate_runs(cli, runs)  # before anything is written: a sweep that cannot run leaves no folder behind
    if primary:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp = sweep_dir / (SWEEP_CONFIG + ".tmp")  # other ranks may read it at the same moment (torchrun)
        tmp.write_text(dumped)
        tmp.replace(sweep_dir / SWEEP_CONFIG)

    console = Console(stderr=True, quiet=not primary)
    order = [v.name for v in ablation.variants]
    states = [run.state for run in runs]
    console.rule(f"[bold]ablation sweep {sweep_dir}")
    console.print(
        f"{len(ablation.variants)} variants x {len(ablation.seeds)} seeds = {len(runs)} runs: "
        f"{states.count('finished')} finished (skipped), {states.count('resume')} to resume, "
        f"{states.count('new')} to start" + (f"; {ablation.workers} workers" if ablation.workers > 1 else "")
    )
    if ablation.workers > 1:
        if not single_process(cfg.trainer):
            raise ConfigError(
                f"ablation.workers {ablation.workers} runs single-process runs side by side; this config trains each "
                "run on several processes (devices / num_nodes / WORLD_SIZE): set workers: 1 for multi-device runs"
            )
        run_workers(sweep_dir, ablation.workers, cfg.get("num_threads"), console)
    else:
        train_runs(cli, runs, states, primary, single_process(cfg.trainer), console)
    if not primary:
        return
    rows = collect(sweep_dir, order)
    write_results(sweep_dir, rows)
    unfinished = [r for r in runs if r.state != "finished"]
    if unfinished:
        held = [f"{r.label} ({(read_claim(r.dir) or {}).get('host', '?')}:{(read_claim(r.dir) or {}).get('pid', '?')})"
                for r in unfinished if read_claim(r.dir)]  # fmt: skip
        console.print(
            f"{len(unfinished)} run(s) not finished here"
            + (f"; being trained by other processes: {', '.join(held)}" if held else "")
            + ". The process that finishes the last run writes results.csv and the plots (or `python -m lit_vit plot "
            f"{sweep_dir}`)"
        )
        if any(not read_claim(r.dir) for r in unfinished):
            raise RuntimeError(f"{len(unfinished)} run(s) did not finish; rerun the command to resume them")
        return
    from lit_vit.ablation.plots import plot_sweep

    written = plot_sweep(sweep_dir)
    console.print(summary_table(rows, order))
    console.print(f"results: {sweep_dir / 'results.csv'}; plots: {', '.join(p.name for p in written)}")


def single_process(trainer_cfg) -> bool:
    """Whether each run of this config trains in one process (so runs can be claimed and run side by side)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or (trainer_cfg.get("num_nodes") or 1) > 1:
        return False
    devices = trainer_cfg.get("devices")
    if devices in (1, "1") or (isinstance(devices, list) and len(devices) == 1):
        return True
    if devices in (None, "auto"):
        import torch

        return str(trainer_cfg.get("accelerator") or "auto") == "cpu" or torch.cuda.device_count() <= 1
    return False


def train_runs(cli, runs: list[Run], states: list[str], primary: bool, claims: bool, console: Console) -> None:
    """Train the runs in order, skipping finished ones. With `claims` (one process per run), a run is trained only
    under its claim, so other sweep processes on this folder (workers, other hosts) never train it at the same time;
    a multi-process (DDP) sweep trains every run on all its ranks and does not claim."""
    sweep_dir = runs[0].dir.parent.parent if runs else Path(".")
    order = list(dict.fromkeys(r.variant.name for r in runs))
    started, trained = time.perf_counter(), 0
    for i, (run, state) in enumerate(zip(runs, states), 1):
        # every process of a DDP sweep decides from the same files, read before this run starts: their states agree
        if state == "finished":
            console.print(f"[dim]run {i}/{len(runs)} {run.label}: finished, skipped")
            continue
        claim = None
        if claims:
            claim = try_claim(run.dir)
            if claim is None:
                holder = read_claim(run.dir) or {}
                console.print(f"[dim]run {i}/{len(runs)} {run.label}: trained by {holder.get('host')}:"
                              f"{holder.get('pid')}, skipped")  # fmt: skip
                continue
            state = run.state  # read again under the claim: another process may have finished it meanwhile
            if state == "finished":
                claim.release()
                continue
        remaining = sum(1 for r in runs[i - 1 :] if r.state != "finished")
        elapsed = time.perf_counter() - started
        eta = f", ~{elapsed / trained * remaining / 60:.1f} min left" if trained else ""
        console.rule(
            f"[bold cyan]run {i}/{len(runs)}[/] {run.label} "
            f"({'resuming from last.ckpt' if state == 'resume' else 'new'}; {elapsed / 60:.1f} min elapsed{eta})"
        )
        try:
            train_run(cli, run, state, primary)
        except SIGTERMException:
            console.print(f"[bold red]run {i}/{len(runs)} {run.label} stopped by SIGTERM[/]; the sweep stops here")
            raise
        finally:
            if claim is not None:
                claim.release()
        trained += 1
        if primary:
            write_results(sweep_dir, collect(sweep_dir, order))


def worker_slices(workers: int, num_threads: int | None) -> list[dict[str, str]]:
    """Environment of each worker: its own GPUs when there are any (e.g. 8 GPUs, 4 workers -> 2 each), on CPU its
    share of the cores as torch threads."""
    import torch

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [g for g in gpus.split(",") if g] if gpus else [str(i) for i in range(torch.cuda.device_count())]
    envs = []
    for i in range(workers):
        env = {}
        if visible:
            per = max(1, len(visible) // workers)
            mine = visible[i * per : (i + 1) * per] or [visible[i % len(visible)]]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        threads = num_threads or max(1, (os.cpu_count() or 1) // workers)
        env["OMP_NUM_THREADS"] = str(threads)
        env["LIT_VIT_WORKER_THREADS"] = str(threads)
        envs.append(env)
    return envs


def run_workers(sweep_dir: Path, workers: int, num_threads: int | None, console: Console) -> None:
    """Start `workers` sweep processes on this folder, each claiming runs one at a time, and wait for them. Their
    output goes to <sweep dir>/logs/worker<i>.log; SIGTERM / Ctrl-C stop them (each saves its last.ckpt)."""
    logs = sweep_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, env in enumerate(worker_slices(workers, num_threads)):
        argv = [sys.executable, "-m", "lit_vit", "fit", f"--config={sweep_dir / SWEEP_CONFIG}", "--ablation.workers=1"]
        argv.append(f"--num_threads={env['LIT_VIT_WORKER_THREADS']}")
        log = open(logs / f"worker{i}.log", "w")  # noqa: SIM115 - closed below, after the process ends
        procs.append((subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}), log))
        console.print(f"worker {i}: pid {procs[-1][0].pid}, {env}, log {logs / f'worker{i}.log'}")

    def stop(signum, frame):
        for p, _ in procs:
            p.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        codes = [p.wait() for p, _ in procs]
    except KeyboardInterrupt:
        stop(signal.SIGINT, None)
        codes = [p.wait() for p, _ in procs]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for _, log in procs:
            log.close()
    failed = [(i, c) for i, c in enumerate(codes) if c != 0]
    if any(c == 128 + signal.SIGTERM or c == -signal.SIGTERM for _, c in failed):
        raise SIGTERMException()
    if failed:
        raise ConfigError(
            "sweep worker(s) failed: "
            + ", ".join(f"worker {i} exit {c} (see {logs / f'worker{i}.log'})" for i, c in failed)
            + "; fix the cause and rerun the command: finished runs are kept, the others resume"
        )


def cli_callbacks(cli) -> list:
    """The trainer callbacks of the sweep's config (class_path entries), as parsed."""
    return list(cli.config["fit"].trainer.get("callbacks") or [])


def train_run(cli, run: Run, state: str, primary: bool = True) -> None:
    if state == "new" and primary and run.dir.is_dir():
        # leftovers of a run killed before its first checkpoint (no checkpoint, no done.json: nothing to resume or
        # keep): start clean, as a new fit writes only into an empty folder (this process's claim stays)
        for path in run.dir.iterdir():
            if path.name != CLAIM_FILE:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    args = run_args(run, "last" if state == "resume" else None)
    # the run's throughput and wall time, from its own ThroughputLogger when the config has one (no per-step syncs)
    configured = any("ThroughputLogger" in str(getattr(c, "class_path", c)) for c in cli_callbacks(cli))
    extra = [] if configured else [ThroughputLogger()]
    # sys.argv stays the sweep's own command line: Lightning's DDP launcher starts the other ranks with it, and
    # they run the same sweep (LightningCLI warns when it gets args while sys.argv holds others: expected here)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
        run_cli = type(cli)(args=args, callbacks=extra)
    trainer = run_cli.trainer
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
        params=sum(p.numel() for p in run_cli.model.parameters()),
        train_images_per_s=round(speed.images_per_second, 1),
        wall_s=round(speed.wall_seconds, 1),
        overrides=run.variant.overrides,
    )
    write_done(run.dir, row)


def _mean_std_text(fractions: list[float | None]) -> str:
    values = [100 * v for v in fractions if v is not None]
    return "{:.2f} +- {:.2f}".format(*mean_std(values)) if values else "-"


def summary_table(rows: list[dict[str, Any]], order: list[str]) -> Table:
    table = Table(title="final validation top-1 (mean +- std over seeds)")
    shots = fewshot_columns(rows)  # FewShotEval's probes, when the runs had it
    columns = ("variant", "seeds", "final top-1 %", "best top-1 %", *(f"{c[8:]} %" for c in shots), "params")
    for column in (*columns, "img/s", "wall s"):
        table.add_column(column, justify="left" if column == "variant" else "right")
    for name in order:
        mine = [r for r in rows if r["variant"] == name]
        if not mine:
            continue
        final = mean_std([100 * r["final_val_acc1"] for r in mine])
        best = mean_std([100 * r["best_val_acc1"] for r in mine])
        table.add_row(
            name,
            str(len(mine)),
            f"{final[0]:.2f} +- {final[1]:.2f}",
            f"{best[0]:.2f} +- {best[1]:.2f}",
            *(_mean_std_text([r.get(c) for r in mine]) for c in shots),
            f"{mine[0]['params']:,}",
            f"{sum(r['train_images_per_s'] for r in mine) / len(mine):.0f}",
            f"{sum(r['wall_s'] for r in mine) / len(mine):.0f}",
        )
    return table
