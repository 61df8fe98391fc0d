"""`bench --mode step`: a short real fit of a fit config (its model, data, augmentation, optimiser and callbacks,
validation and checkpoints off) with lit_vit.callbacks.StepProfile, to show how a training step splits into waiting
for data, forward, backward and the optimiser."""

import json
import tempfile
import warnings
from pathlib import Path

import yaml
from jsonargparse import Namespace

from lit_vit.callbacks.step_profile import StepProfile
from lit_vit.errors import ConfigError

DEFAULT_STEP_CONFIG = "experiments/quickstart.yaml"


def step_config_path(path: str | None) -> str:
    """The fit config `--mode step` runs: the given one, or experiments/quickstart.yaml."""
    return path or DEFAULT_STEP_CONFIG


def read_fit_config(path: str | None) -> tuple[str, dict]:
    """The path of the fit config `--mode step` runs (default experiments/quickstart.yaml) and its contents."""
    path = step_config_path(path)
    config = yaml.safe_load(Path(path).read_text()) if Path(path).is_file() else None
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise ConfigError(
            f"--mode step runs a fit config, but {path} is not one (it needs model: and data: sections); give "
            f"--config <a fit config>, e.g. --config {DEFAULT_STEP_CONFIG}"
        )
    return path, config


def step_args(args: Namespace, argv: list[str], root: str) -> list[str]:
    """The fit's command line: the bench's config with the --backbone* / --data* values given on the command line,
    trimmed to training."""
    model_modes = {"train", "infer"} & set(args.mode)
    if "--batch-size" in {arg.split("=", 1)[0] for arg in argv} and not model_modes:
        raise ConfigError(
            "--batch-size sets the batch of the train / infer modes; --mode step trains with the config's data: "
            "give --data-batch-size N (or --data.init_args.batch_size N) instead"
        )
    path, config = read_fit_config(args.config)
    cli = [
        f"--config={path}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.max_steps={args.warmup + args.profile_steps}",
        "--trainer.limit_val_batches=0",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_checkpointing=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
        "--trainer.devices=1",
        f"--trainer.precision={args.precision}",
    ]
    if args.device.startswith("cuda:"):
        cli[-2] = f"--trainer.devices=[{int(args.device.split(':', 1)[1])}]"
    if "ablation" in config:
        cli.append("--ablation=null")  # one run of the sweep's base config
    given = {arg.split("=", 1)[0].split(".", 1)[0] for arg in argv}
    if args.backbone is not None and "--backbone" in given:
        cli.append(f"--model.init_args.backbone={json.dumps(args.backbone.as_dict())}")
    if args.data is not None and "--data" in given:
        cli.append(f"--data={json.dumps(args.data.as_dict())}")
    if args.data_batch_size is not None:
        cli.append(f"--data.init_args.batch_size={args.data_batch_size}")
    if args.compile:
        cli.append("--model.init_args.compile=true")
    return cli


def bench_step(args: Namespace, argv: list[str]) -> dict:
    """Fit `warmup + profile_steps` steps and return StepProfile's summary (the first `warmup` steps left out)."""
    from lit_vit.cli import LitViTCLI  # the CLI (and Lightning's) only for this mode

    profile = StepProfile(skip=args.warmup, print_summary=False)
    with tempfile.TemporaryDirectory(prefix="lit_vit_bench_step_") as root:
        with warnings.catch_warnings():  # LightningCLI warns that args differ from sys.argv (the bench's): expected
            warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
            LitViTCLI(args=["fit", *step_args(args, argv, root)], callbacks=[profile])
    return profile.summary()
