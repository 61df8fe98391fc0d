"""`python -m lit_vit fit | validate | test | predict --config <yaml>`: LightningCLI with lit_vit's run directory.

A run lives in the Trainer's `default_root_dir`: config.yaml, metrics.csv, checkpoints/last.ckpt and
checkpoints/best.ckpt. `--ckpt_path last` continues that run; a new fit never silently overwrites it. The run folder's
rules and writers (guard, resume diff, checkpoint reading, metrics.csv, atomic checkpoints) are lit_vit.run_folder's.
"""

import importlib
import importlib.util
import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, LearningRateMonitor
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins import CheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lit_vit import lightning_compat
from lit_vit.ablation.config import Ablation
from lit_vit.callbacks import PredictionCSVWriter, run_checkpoints
from lit_vit.callbacks.resume import ExactResume, stopped_by
from lit_vit.cli_parser import EpilogFormatter, LitViTParser
from lit_vit.commands import EXTRA_COMMANDS, EXTRA_COMMANDS_HELP
from lit_vit.config_diff import flatten
from lit_vit.errors import ConfigError, config_error_in, user_message
from lit_vit.run_folder import (
    RESUME_MAY_CHANGE,
    AtomicCheckpointIO,
    RunLogger,
    disk_error,
    disk_error_message,
    hold_run_folder,
    is_primary_process,
    model_differences,
    new_evaluation_dir,
    own_folder_of_config,
    read_checkpoint,
    release_folders,
    resolve_ckpt_path,
)


class FitConfigSaver(SaveConfigCallback):
    """Saves config.yaml for `fit` only: validate / test / predict must not overwrite the training config.

    config.yaml is a recipe, not a pointer: it never stores `ckpt_path` (a resumed run's config would otherwise send
    every later `test --config` or rerun to that checkpoint, of this folder or of the one it was copied from)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.config = self.config.clone()
            self.config.ckpt_path = None
            super().setup(trainer, pl_module, stage)


def check_training_length(trainer_cfg: Any) -> None:
    """The warm-up + cosine schedule needs a finite number of steps: refuse infinite or empty fits up front."""
    epochs, steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps")
    if steps is not None and steps < -1:
        raise ConfigError(f"--trainer.max_steps must be -1 (no limit) or 1 or more, got {steps}")
    if steps == 0:
        raise ConfigError("--trainer.max_steps 0 trains nothing; give 1 or more (or -1 for no step limit)")
    if epochs is not None and (epochs < -1 or epochs == 0):
        raise ConfigError(
            f"--trainer.max_epochs must be 1 or more (or -1 for no epoch limit together with --trainer.max_steps), "
            f"got {epochs}"
        )
    if epochs == -1 and steps in (None, -1):
        raise ConfigError(
            "--trainer.max_epochs -1 (no limit) without --trainer.max_steps has no end, and the learning-rate "
            "schedule (warm-up + cosine) needs one: set --trainer.max_epochs N or --trainer.max_steps N"
        )


def pretrained_to_evaluate(model_cfg: Any) -> str | None:
    """The model's `pretrained` file when its class may be evaluated on those weights without a fine-tuned checkpoint
    (`evaluates_pretrained`: the ViLT modules, which refuse a file without their task's trained heads), else None."""
    if model_cfg is None or not model_cfg.get("class_path"):
        return None
    pretrained = (model_cfg.get("init_args") or {}).get("pretrained")
    if not pretrained:
        return None
    module, _, name = str(model_cfg["class_path"]).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None  # the instantiation names the bad class path
    return str(pretrained) if getattr(cls, "evaluates_pretrained", False) else None


RESUME_HELP = (
    "Resuming with --ckpt_path last | best | <file.ckpt>: the model options (architecture, optimiser, schedule, "
    "loss) must equal the checkpoint's, or lit_vit stops and lists the differing keys; trainer options (max_epochs, "
    "max_steps, devices, precision, callbacks, logging), data loading and model.init_args.compile / pretrained may "
    "change. validate / test / predict without --ckpt_path use <default_root_dir>/checkpoints/best.ckpt (a ViLT module "
    "without one: its --model.init_args.pretrained weights as they are, zero-shot, if they hold the task's heads) and "
    "write their metrics to <default_root_dir>/evaluations/, never to the training metrics.csv."
)


class LitViTCLI(LightningCLI):
    """lit_vit's CLI; `callbacks` are added to the Trainer's (the ablation sweep passes its timing callback)."""

    def __init__(self, args: list[str] | None = None, run: bool = True, callbacks: list[Callback] | None = None):
        lightning_compat.check_lightning_version()
        lightning_compat.patch_lightning()  # the DDP SIGTERM deadlock fix (see lit_vit.lightning_compat)
        self.extra_callbacks = list(callbacks or [])
        super().__init__(
            model_class=L.LightningModule,
            datamodule_class=L.LightningDataModule,
            parser_class=LitViTParser,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=FitConfigSaver,
            save_config_kwargs={"overwrite": True},
            trainer_defaults={"default_root_dir": "runs/default", "log_every_n_steps": 10},
            parser_kwargs={
                "epilog": EXTRA_COMMANDS_HELP,
                "formatter_class": EpilogFormatter,  # keeps EXTRA_COMMANDS_HELP's line breaks
                **{name: {"epilog": RESUME_HELP} for name in ("fit", "validate", "test", "predict")},
            },
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
            "--tensorboard",
            type=bool,
            default=False,
            help="fit: also log to TensorBoard in <run dir>/tensorboard/ (needs the extra: pip install -e "
            "'.[tensorboard]'); metrics.csv is written either way, and any Lightning logger given as --trainer.logger "
            "is added beside it",
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
            help="an ablation sweep (run by `python -m lit_vit sweep`, or by fit when the config has one): variants "
            "(name + config overrides) x seeds, each an ordinary run in <default_root_dir>/<variant>/seed=<n>/; see "
            "lit_vit/ablation and experiments/ablation_pos.yaml",
        )

    @property
    def run_dir(self) -> Path:
        return Path(self.config[self.config.subcommand].trainer.default_root_dir or "runs/default")

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        # Resolve 'last' / 'best' (and the default best.ckpt of validate / test / predict), guard the run folder and
        # read the checkpoint safely before Lightning merges its hyper-parameters into the config (LightningCLI does
        # that right after this hook). The merge would silently replace the user's model options by the checkpoint's,
        # so they are compared first: a difference is an error (RESUME_MAY_CHANGE excepted, and those keep the user's
        # values: put back in before_instantiate_classes).
        super().parse_arguments(parser, args)
        # the command as given (evaluation.json records it): a command line, or the values of a programmatic call
        if isinstance(args, dict):
            self.command = [json.dumps(args, default=str)]
        else:
            self.command = list(sys.argv[1:] if args is None else args)
        self.keep_on_resume: dict[str, Any] = {}
        self.evaluated_pretrained: str | None = None
        subcommand = self.config.get("subcommand")
        cfg = self.config[subcommand] if subcommand else None
        if cfg is None or "ckpt_path" not in cfg or cfg.get("ablation") is not None:
            return
        if args is None or isinstance(args, list | tuple):  # a command line (a dict of values names no config file)
            self._read_config_as_recipe(subcommand, cfg, sys.argv[1:] if args is None else list(args))
        if subcommand == "fit" and is_primary_process():
            hold_run_folder(self.run_dir)  # one writer per run folder, claimed before anything is written
        self.evaluated_pretrained = pretrained_to_evaluate(cfg.get("model"))
        cfg.ckpt_path = resolve_ckpt_path(subcommand, cfg.ckpt_path, self.run_dir, self.evaluated_pretrained)
        if cfg.ckpt_path is None:
            return
        ckpt = read_checkpoint(Path(cfg.ckpt_path), self.run_dir)
        diffs = model_differences(cfg.model, dict(ckpt.get("hyper_parameters") or {}))
        del ckpt
        if diffs:
            listed = "; ".join(f"{k}: {v!r} here, {c!r} in the checkpoint" for k, v, c in diffs[:6])
            more = f" (and {len(diffs) - 6} more)" if len(diffs) > 6 else ""
            raise ConfigError(
                f"{subcommand} --ckpt_path {cfg.ckpt_path}: the model config differs from the checkpoint's: {listed}"
                f"{more}. Use the run's own config (--config <run dir>/config.yaml), or start a new run in a new "
                "folder without --ckpt_path (e.g. with --model.init_args.pretrained for the weights)"
            )
        self.keep_on_resume = {k: v for k, v in flatten(cfg.model, "model").items() if k in RESUME_MAY_CHANGE}

    def _read_config_as_recipe(self, subcommand: str, cfg: Any, argv: list[str]) -> None:
        """A run's config.yaml is a recipe of its own folder: its files are the ones a command on it uses (also when
        the folder was copied or moved), and a checkpoint is named only on the command line."""
        given = [a for a in argv if a == "--ckpt_path" or a.startswith("--ckpt_path=")]
        if cfg.ckpt_path is not None and not given and cfg.get("config"):  # (a program's dict args name it: kept)
            # written by lit_vit before config.yaml stopped storing it (or by hand): obeying it would evaluate or
            # resume a checkpoint nobody named on this command line
            print(
                f"{subcommand}: ignoring ckpt_path {cfg.ckpt_path} found in the config file (a config is a recipe); "
                "give --ckpt_path on the command line to resume or evaluate a checkpoint",
                file=sys.stderr,
            )
            cfg.ckpt_path = None
        folder = own_folder_of_config(cfg.get("config"), cfg.trainer.get("default_root_dir"), argv)
        if folder is not None:
            if is_primary_process():
                print(
                    f"{subcommand}: using the run folder of {folder / 'config.yaml'}: {folder} (the config names "
                    f"{cfg.trainer.get('default_root_dir')}; set --trainer.default_root_dir to choose another)",
                    file=sys.stderr,
                )
            cfg.trainer.default_root_dir = str(folder)

    def before_instantiate_classes(self) -> None:
        # run=False (the sweep's LitViTCLI): the config is a fit config, not nested under a subcommand
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        for key, value in self.keep_on_resume.items():  # see parse_arguments
            cfg[key] = value
        threads = cfg.get("num_threads")
        if threads is not None:
            if threads < 1:
                raise ConfigError(
                    f"--num_threads must be 1 or more, got {threads}; e.g. --num_threads 1 (or leave it unset for "
                    "PyTorch's choice)"
                )
            torch.set_num_threads(threads)
        if self.subcommand not in ("fit", None) and cfg.get("ablation") is not None:
            raise ConfigError(
                f"{self.subcommand} does not run ablation sweeps; give the config of one run instead: "
                "--config <sweep dir>/<variant>/seed=<n>/config.yaml"
            )
        if self.subcommand == "fit" and cfg.get("ablation") is not None:  # main() sends configs it sees to the sweep
            raise ConfigError(
                "this config has an ablation: section, which fit could not tell from the command line; run the sweep "
                "with python -m lit_vit sweep <the same options>"
            )
        if self.subcommand in ("fit", None):
            check_training_length(cfg.trainer)
            if cfg.get("tensorboard") and importlib.util.find_spec("tensorboard") is None:
                raise ConfigError(
                    "--tensorboard true needs the tensorboard package: pip install -e '.[tensorboard]' (or pip install "
                    "tensorboard), or leave --tensorboard off"
                )
            strategy = cfg.trainer.get("strategy")
            name = str(getattr(strategy, "class_path", strategy) or "").lower()
            if "fsdp" in name and not torch.cuda.is_available():
                raise ConfigError(
                    f"--trainer.strategy {getattr(strategy, 'class_path', strategy)}: FSDP needs GPUs (torch's FSDP "
                    "refuses CPU-only processes) and none is visible here; use ddp (or one device) on CPUs"
                )
            if cfg.get("tensorboard") and cfg.trainer.get("logger") is False:
                raise ConfigError("--tensorboard true with --trainer.logger false: remove one of them")
        if self.subcommand == "predict" and cfg.get("predict_top_k") is not None and cfg.predict_top_k < 1:
            raise ConfigError(
                f"--predict_top_k must be 1 or more (at most the number of classes), got {cfg.predict_top_k}; e.g. "
                "--predict_top_k 5"
            )
        if cfg.get("checkpoint_every_n_steps") is not None and cfg.checkpoint_every_n_steps < 0:
            raise ConfigError(
                f"--checkpoint_every_n_steps must be 0 (only at validation and epoch ends) or more, got "
                f"{cfg.checkpoint_every_n_steps}"
            )

    def instantiate_trainer(self, **kwargs) -> L.Trainer:
        cfg = self.config_init[self.subcommand]
        trainer_cfg = cfg.trainer
        root = self.run_dir
        callbacks = list(trainer_cfg.get("callbacks") or [])
        user_logger = trainer_cfg.get("logger")
        if self.subcommand == "fit" and user_logger is not False:
            # metrics.csv is always written (the sweep, plot and resume read it); configured loggers come beside it
            extra = (
                []
                if user_logger in (None, True)
                else list(user_logger if isinstance(user_logger, list) else [user_logger])
            )
            if cfg.get("tensorboard"):
                from lightning.pytorch.loggers import TensorBoardLogger

                extra.append(TensorBoardLogger(str(root), name="tensorboard", version=""))
            kwargs["logger"] = [RunLogger(str(root)), *extra]
            if not any(isinstance(c, LearningRateMonitor) for c in callbacks):
                callbacks.append(LearningRateMonitor(logging_interval="step"))
        if self.subcommand == "fit" and not any(isinstance(c, ExactResume) for c in callbacks):
            callbacks.append(ExactResume())  # random states, unfinished-epoch metric sums, Ctrl-C at a step boundary
        if trainer_cfg.get("enable_checkpointing") is not False and not trainer_cfg.get("fast_dev_run"):
            # lit_vit's modules declare `monitor` (metric, mode); a user's module without one: val/acc1, max
            monitor, mode = getattr(self.model, "monitor", ("val/acc1", "max"))
            callbacks += run_checkpoints(root / "checkpoints", monitor, mode, cfg.checkpoint_every_n_steps)
        # every checkpoint is written atomically, unless the user configured a checkpoint writer of their own
        plugins = trainer_cfg.get("plugins")
        plugins = [] if plugins is None else list(plugins if isinstance(plugins, list) else [plugins])
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        if self.subcommand != "fit" and trainer_cfg.get("logger") in (None, True):
            # evaluations never touch the training metrics.csv: one new folder per evaluation, beside it
            evaluated = cfg.ckpt_path or self.evaluated_pretrained  # None only for a zero-shot evaluation
            name = new_evaluation_dir(root, self.subcommand, evaluated, is_primary_process(), self.command)
            kwargs["logger"] = RunLogger(str(root / "evaluations" / name))
        if self.subcommand == "predict":
            writer = getattr(self.model, "prediction_writer", PredictionCSVWriter)  # a module may write its own table
            callbacks.append(writer(cfg.predict_output or root / "predictions.csv", cfg.predict_top_k))
        kwargs["callbacks"] = callbacks + self.extra_callbacks
        return super().instantiate_trainer(**kwargs)


# argparse takes "-1" and "-0.5" as values but reads a negative number with an exponent ("-1e-3") as an option
_NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def asks_for_sweep(argv: list[str]) -> bool:
    """Whether fit's options set an ablation: a --config file with a top-level `ablation:` entry, or --ablation options
    on the command line (the last word wins: `--ablation null` after a sweep's config trains its base config once)."""
    sweep = False
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("--config", "-c"):
            path = Path(value or (argv[i + 1] if i + 1 < len(argv) else ""))
            if path.is_file():
                try:
                    loaded = yaml.safe_load(path.read_text())
                except (yaml.YAMLError, UnicodeDecodeError):
                    continue  # the parser reports it
                if isinstance(loaded, dict) and "ablation" in loaded:
                    sweep = loaded["ablation"] is not None
        elif name == "--ablation" or name.startswith("--ablation."):
            value = value if "=" in arg else (argv[i + 1] if i + 1 < len(argv) else "")
            sweep = name != "--ablation" or value.strip().lower() not in ("null", "none", "")
    return sweep


def check_negative_numbers(argv: list[str]) -> None:
    """argparse reads `--opt -1e-3` as two options ("expected one argument"): say how to write it."""
    for opt, value in zip(argv, argv[1:]):
        if (
            opt.startswith("--")
            and "=" not in opt
            and _NEGATIVE_NUMBER.match(value)
            and not value.lstrip("-").isdigit()
        ):
            raise ConfigError(
                f"{opt} {value}: a negative number in this form is read as an option; write {opt}={value}"
            )


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)

    def command() -> None:
        nonlocal argv
        check_negative_numbers(argv)
        if argv and argv[0] == "fit" and asks_for_sweep(argv[1:]):
            argv = ["sweep", *argv[1:]]  # the sweep's own command: a sweep has no Trainer to fit
        if argv and argv[0] in EXTRA_COMMANDS:
            module, func = EXTRA_COMMANDS[argv[0]].split(":")
            getattr(importlib.import_module(module), func)(argv[1:])
        else:
            LitViTCLI(args=args)

    run_guarded(command)


def run_guarded(command: Callable[[], None]) -> None:
    """Run a command the way `python -m lit_vit` ends: a SIGTERM / Ctrl-C stop as exit 143 / 130 with one line, a
    configuration or full-disk error as one `error:` line and exit 2 (SystemExit); the run-folder claims released.
    Also the body of a sweep worker forked from the sweep's process (lit_vit.ablation.workers)."""
    try:
        try:
            command()
        except SIGTERMException:
            # Lightning ends a fit stopped by SIGTERM with SystemExit(None), i.e. exit status 0, so a scheduler or a
            # `fit && test` script would take the run for finished. last.ckpt was written (LastCheckpoint.on_exception).
            if stopped_by["signal"] == signal.SIGINT:  # Ctrl-C, turned into the same stop at a step boundary
                print(
                    "interrupted (Ctrl-C): last.ckpt is saved; run the same command with --ckpt_path last to resume "
                    "(an ablation sweep resumes with the same command)",
                    file=sys.stderr,
                )
                sys.exit(128 + signal.SIGINT)
            print(
                "interrupted by SIGTERM: last.ckpt is saved; run the same command with --ckpt_path last to resume "
                "(an ablation sweep resumes with the same command)",
                file=sys.stderr,
            )
            sys.exit(128 + signal.SIGTERM)  # what a shell reports for a process ended by SIGTERM
        except OSError as err:
            full = disk_error(err)
            if full is None:
                raise
            print(f"error: {disk_error_message(full)}", file=sys.stderr)
            sys.exit(2)
        except (ConfigError, ValueError, MisconfigurationException) as err:
            config_error = config_error_in(err)
            if config_error is None and isinstance(err, MisconfigurationException):
                config_error = err  # Lightning's own check of a trainer option: its message names the option
            if config_error is None:
                raise
            print(f"error: {user_message(config_error)}", file=sys.stderr)
            sys.exit(2)

    finally:
        release_folders()  # the run-folder claims of this command's fits
