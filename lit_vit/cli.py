"""`python -m lit_vit fit | validate | test | predict --config <yaml>`: LightningCLI with lit_vit's run directory.

A run lives in the Trainer's `default_root_dir`: config.yaml, metrics.csv, checkpoints/last.ckpt and
checkpoints/best.ckpt. `--ckpt_path last` continues that run; a new fit never silently overwrites it.
"""

import importlib
import os
import signal
import sys
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_vit.ablation.config import Ablation
from lit_vit.callbacks import AtomicModelCheckpoint, LastCheckpoint, PredictionCSVWriter, RunLogger
from lit_vit.errors import ConfigError


class FitConfigSaver(SaveConfigCallback):
    """Saves config.yaml for `fit` only: validate / test / predict must not overwrite the training config."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


def check_checkpoint(path: Path) -> None:
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a .ckpt file written by lit_vit")
    if not zipfile.is_zipfile(path):
        raise ConfigError(
            f"{path} is not a checkpoint (not a file written by torch.save); "
            "give a .ckpt from <run dir>/checkpoints/, e.g. last.ckpt or best.ckpt"
        )


def resolve_ckpt_path(subcommand: str, ckpt_path: str | None, run_dir: Path) -> str | None:
    """'last' / 'best' mean this run's checkpoints; a fresh fit refuses to overwrite a run that has one."""
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path in ("last", "best"):
        path = run_dir / "checkpoints" / f"{ckpt_path}.ckpt"
        if not path.is_file():
            raise ConfigError(
                f"--ckpt_path {ckpt_path}: no checkpoint at {path}. Check --trainer.default_root_dir (now {run_dir}) "
                "or start a new run without --ckpt_path"
            )
        return str(path)
    if ckpt_path is not None:
        check_checkpoint(Path(ckpt_path))
        return ckpt_path
    primary = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    if subcommand == "fit" and last.is_file() and primary:
        raise ConfigError(
            f"{run_dir} already holds a run ({last}). Resume it with --ckpt_path last, or start a new run with "
            f"--trainer.default_root_dir <new dir> (or delete {run_dir})"
        )
    return None


class LitViTCLI(LightningCLI):
    """lit_vit's CLI; `callbacks` are added to the Trainer's (the ablation sweep passes its timing callback)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, callbacks: list[Callback] | None = None):
        self.extra_callbacks = list(callbacks or [])
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=FitConfigSaver,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "runs/default", "log_every_n_steps": 10},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int,
            default=100,
            help="refresh <run dir>/checkpoints/last.ckpt every N optimiser steps (and after every validation)",
        )
        parser.add_argument("--predict_top_k", type=int, default=5, help="classes per image in the predict CSV")
        parser.add_argument(
            "--predict_output", type=str | None, default=None, help="predict CSV (default <run dir>/predictions.csv)"
        )
        parser.add_argument(
            "--num_threads",
            type=int | None,
            default=None,
            help="torch intra-op CPU threads (torch.set_num_threads); 1 is fastest for tiny models on a small or busy "
            "CPU (default: PyTorch's choice, one per core)",
        )
        parser.add_argument(
            "--ablation",
            type=Ablation | None,
            default=None,
            help="a sweep for fit: variants (name + config overrides) x seeds, each an ordinary run in "
            "<default_root_dir>/<variant>/seed=<n>/; see lit_vit/ablation and experiments/ablation_pos.yaml",
        )

    @property
    def sweeping(self) -> bool:
        return self.subcommand == "fit" and self.config["fit"].get("ablation") is not None

    @property
    def run_dir(self) -> Path:
        return Path(self.config[self.config.subcommand].trainer.default_root_dir or "runs/default")

    def _parse_ckpt_path(self) -> None:
        # Resolve 'last' / 'best' to this run's files and check them before Lightning reads the checkpoint's
        # hyperparameters into the config (so `predict --ckpt_path best` rebuilds the trained model).
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else None
        if cfg is not None and "ckpt_path" in cfg and cfg.get("ablation") is None:
            cfg.ckpt_path = resolve_ckpt_path(subcommand, cfg.ckpt_path, self.run_dir)
        super()._parse_ckpt_path()

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand]
        if cfg.get("num_threads"):
            torch.set_num_threads(cfg.num_threads)
        if self.subcommand != "fit" and cfg.get("ablation") is not None:
            raise ConfigError(
                f"{self.subcommand} does not run ablation sweeps; give the config of one run instead: "
                "--config <sweep dir>/<variant>/seed=<n>/config.yaml"
            )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        cfg = self.config_init[self.subcommand]
        trainer_cfg = cfg.trainer
        root = self.run_dir
        if trainer_cfg.get("logger") in (None, True):
            kwargs["logger"] = RunLogger(str(root))
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if trainer_cfg.get("enable_checkpointing") is not False and not trainer_cfg.get("fast_dev_run"):
            monitor, mode = getattr(self.model, "monitor", ("val/acc1", "max"))
            callbacks += [
                AtomicModelCheckpoint(
                    dirpath=root / "checkpoints", filename="best", monitor=monitor, mode=mode,
                    save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False,
                ),
                LastCheckpoint(root / "checkpoints", every_n_steps=cfg.checkpoint_every_n_steps),
            ]  # fmt: skip
        if self.subcommand == "predict":
            callbacks.append(PredictionCSVWriter(cfg.predict_output or root / "predictions.csv", cfg.predict_top_k))
        kwargs["callbacks"] = callbacks + self.extra_callbacks
        return super().instantiate_trainer(**kwargs)

    def instantiate_classes(self) -> None:
        if not self.sweeping:  # a sweep builds its runs' classes itself
            super().instantiate_classes()

    def _run_subcommand(self, subcommand: str) -> None:
        if self.sweeping:
            from lit_vit.ablation.sweep import run_sweep

            run_sweep(self)
        else:
            super()._run_subcommand(subcommand)


# Subcommands beyond LightningCLI's fit / validate / test / predict: name -> "module:function(argv)".
EXTRA_COMMANDS: dict[str, str] = {"bench": "lit_vit.bench:main", "plot": "lit_vit.ablation.plots:main"}


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in EXTRA_COMMANDS:
            module, func = EXTRA_COMMANDS[argv[0]].split(":")
            getattr(importlib.import_module(module), func)(argv[1:])
        else:
            LitViTCLI(args=args)
    except SIGTERMException:
        # Lightning ends a fit stopped by SIGTERM with SystemExit(None), i.e. exit status 0, so a scheduler or a
        # `fit && test` script would take the run for finished. last.ckpt was written (LastCheckpoint.on_exception).
        print(
            "interrupted by SIGTERM: last.ckpt is saved; run the same command with --ckpt_path last to resume "
            "(an ablation sweep resumes with the same command)",
            file=sys.stderr,
        )
        sys.exit(128 + signal.SIGTERM)  # what a shell reports for a process ended by SIGTERM
    except (ConfigError, ValueError) as err:
        config_error = _config_error(err)
        if config_error is None:
            raise
        print(f"error: {config_error}", file=sys.stderr)
        sys.exit(2)


def _config_error(err: BaseException | None) -> ConfigError | None:
    """The ConfigError behind `err`: jsonargparse wraps one raised in a class constructor (e.g. a backbone's) into a
    ValueError while instantiating the config."""
    seen = 0
    while err is not None and seen < 10:
        if isinstance(err, ConfigError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None
