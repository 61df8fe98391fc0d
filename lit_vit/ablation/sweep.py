"""Runs an ablation: every variant x seed as an ordinary lit_vit run in `<default_root_dir>/<variant>/seed=<n>/`.

`python -m lit_vit fit --config <yaml with an ablation: section>` lands here (LitViTCLI hands over). The sweep

1. writes the resolved config to `<sweep dir>/sweep.yaml` and builds each run's command line from it: the
   variant's overrides, `--seed_everything <n>` (and `--data.init_args.seed <n>` when the data module has a seed),
   `--trainer.default_root_dir <sweep dir>/<variant>/seed=<n>`;
2. validates every run before the first one starts: unknown override keys, values the parser rejects, models
   that cannot be built (e.g. sincos_2d with a width not divisible by 4) and missing data (each variant's data
   module runs prepare_data and reads its class list, on local rank 0) are ConfigErrors naming the variant;
3. runs them one after the other in this process: a run with `done.json` is skipped, a run with
   `checkpoints/last.ckpt` resumes from it (`--ckpt_path last`), any other starts from scratch; after fit, the
   results row is written to `done.json` and `results.csv` is refreshed;
4. draws the plots (lit_vit.ablation.plots) when all runs are finished.
"""

import difflib
import os
import shutil
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
from lit_vit.callbacks.artifacts import TrainSpeed
from lit_vit.config_diff import describe, differences
from lit_vit.errors import ConfigError

SWEEP_CONFIG = "sweep.yaml"


@dataclass
class Run:
    variant: Variant
    seed: int
    dir: Path
    argv: list[str]

    @property
    def label(self) -> str:
        return f"{self.variant.name} seed={self.seed}"

    @property
    def state(self) -> str:
        if read_done(self.dir) is not None:
            return "finished"
        return "resume" if (self.dir / "checkpoints" / "last.ckpt").is_file() else "new"


def _format_value(value: Any) -> str:
    import json

    return value if isinstance(value, str) else json.dumps(value)


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


def plan_runs(cli, ablation: Ablation, sweep_dir: Path, base_cfg) -> list[Run]:
    """Every run's command line, seed-major (all variants of the first seed first, so a partial sweep compares)."""
    has_data_seed = "data.init_args.seed" in base_cfg
    runs = []
    for seed in ablation.seeds:
        for variant in ablation.variants:
            rdir = run_dir(sweep_dir, variant.name, seed)
            argv = ["fit", f"--config={sweep_dir / SWEEP_CONFIG}", "--ablation=null"]
            argv += [f"--{k}={_format_value(v)}" for k, v in variant.overrides.items()]
            argv += [f"--trainer.default_root_dir={rdir}", f"--seed_everything={seed}"]
            if has_data_seed and "data.init_args.seed" not in variant.overrides:
                argv.append(f"--data.init_args.seed={seed}")
            runs.append(Run(variant, seed, rdir, argv))
    return runs


def validate_runs(cli, runs: list[Run], base_cfg) -> None:
    """Parse every run's arguments, build each variant's model and data module once and check that its data is
    there (prepare_data may download or extract it, as Lightning would at the start of the run); nothing is trained."""
    fit_parser = cli._subcommand_parsers["fit"]
    built: set[str] = set()
    for run in runs:
        for key in run.variant.overrides:
            _check_key(key, run.variant, base_cfg)
        with _raising(cli.parser, fit_parser):
            try:
                cfg = cli.parser.parse_args(run.argv)
            except ArgumentError as err:
                raise ConfigError(
                    f"ablation variant {run.variant.name!r} (seed {run.seed}): its overrides "
                    f"{run.variant.overrides} do not parse: {err}. Fix the variant's values"
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
RERUN_MAY_CHANGE = ("num_threads", "ckpt_path", "trainer.enable_progress_bar", "trainer.enable_model_summary")


def check_rerun(sweep_dir: Path, runs: list[Run], new_config: str) -> None:
    """A rerun must resolve to the config its runs used (sweep.yaml); new seeds and new variants may be added."""
    path = sweep_dir / SWEEP_CONFIG
    started = [r for r in runs if r.state != "new"]
    if not path.is_file() or not started:
        return
    old, new = yaml.safe_load(path.read_text()) or {}, yaml.safe_load(new_config) or {}
    diffs = differences(new, old, ignore=(*RERUN_MAY_CHANGE, "ablation."))
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
    runs = plan_runs(cli, ablation, sweep_dir, base_cfg)
    dumped = cli._subcommand_parsers["fit"].dump(base_cfg, skip_none=False)
    check_rerun(sweep_dir, runs, dumped)
    if primary:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_CONFIG).write_text(dumped)
    validate_runs(cli, runs, base_cfg)

    console = Console(stderr=True, quiet=not primary)
    order = [v.name for v in ablation.variants]
    states = [run.state for run in runs]
    console.rule(f"[bold]ablation sweep {sweep_dir}")
    console.print(
        f"{len(ablation.variants)} variants x {len(ablation.seeds)} seeds = {len(runs)} runs: "
        f"{states.count('finished')} finished (skipped), {states.count('resume')} to resume, "
        f"{states.count('new')} to start"
    )
    started, trained = time.perf_counter(), 0
    for i, (run, state) in enumerate(zip(runs, states), 1):
        # every process decides from the same files, read before this run starts: the states of one sweep agree
        if state == "finished":
            console.print(f"[dim]run {i}/{len(runs)} {run.label}: finished, skipped")
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
        trained += 1
        if primary:
            write_results(sweep_dir, collect(sweep_dir, order))

    if not primary:
        return
    rows = collect(sweep_dir, order)
    write_results(sweep_dir, rows)
    from lit_vit.ablation.plots import plot_sweep

    written = plot_sweep(sweep_dir)
    console.print(summary_table(rows, order))
    console.print(f"results: {sweep_dir / 'results.csv'}; plots: {', '.join(p.name for p in written)}")


def train_run(cli, run: Run, state: str, primary: bool = True) -> None:
    if state == "new" and primary:
        # leftovers of a run killed before its first checkpoint (no checkpoint, no done.json: nothing to resume or
        # keep): start clean, as a new fit writes only into an empty folder
        shutil.rmtree(run.dir, ignore_errors=True)
    argv = run.argv + (["--ckpt_path=last"] if state == "resume" else [])
    speed = TrainSpeed()
    # sys.argv stays the sweep's own command line: Lightning's DDP launcher starts the other ranks with it, and
    # they run the same sweep (LightningCLI warns when it gets args while sys.argv holds others: expected here)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
        run_cli = type(cli)(args=argv, callbacks=[speed])
    trainer = run_cli.trainer
    if trainer.state.status != TrainerStatus.FINISHED or trainer.interrupted:
        raise RuntimeError(f"run {run.label} did not finish ({trainer.state.status}); rerun the command to resume it")
    if not primary:
        return
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
