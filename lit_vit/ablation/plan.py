"""A sweep's plan: every variant x seed as a run config derived from the parsed sweep config, checked before any run.

Each run's config is a clone of the sweep's with the variant's overrides, `seed_everything <n>` (and
`data.init_args.seed <n>` when the data module has a seed) and `trainer.default_root_dir
<sweep dir>/<variant>/seed=<n>`, never text. `validate_runs` parses every run's config, builds each variant's model,
data module and callbacks once and lets them check each other (missing data, a FewShotEval shot count the data cannot
give) before anything is written; `check_rerun` refuses a rerun whose config differs from the sweep.yaml the runs used.
"""

import difflib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError

from lit_vit.ablation.config import Ablation, Variant
from lit_vit.ablation.results import read_done, run_dir
from lit_vit.cli_parser import condense
from lit_vit.config_diff import describe, differences, flatten
from lit_vit.errors import ConfigError, config_error_in
from lit_vit.run_folder import is_primary_process

SWEEP_CONFIG = "sweep.yaml"
# Options a rerun may change without changing any number a finished run produced.
RERUN_MAY_CHANGE = (
    "num_threads",
    "ckpt_path",
    "checkpoint_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
)


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

    def args(self, ckpt_path: str | None = None) -> dict[str, Any]:
        """The run's fit config as a dict (the `args` of LightningCLI's fit, no --config file in between)."""
        cfg = self.config.clone()
        cfg.ckpt_path = ckpt_path
        values = cfg.as_dict()
        values.pop("config", None)  # the sweep's --config file list: the values are all here
        return values


def _leaf_keys(cfg, prefix: str = "") -> list[str]:
    keys = []
    for key, value in vars(cfg).items():
        keys.append(f"{prefix}{key}")
        if type(value).__name__ == "Namespace":
            keys += _leaf_keys(value, f"{prefix}{key}.")
    return keys


def _check_key(key: str, variant: Variant, base_cfg) -> None:
    if key in base_cfg:
        return
    close = difflib.get_close_matches(key, _leaf_keys(base_cfg), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(
        f"ablation variant {variant.name!r} overrides {key!r}, which is not a key of this config; {hint}"
        "write keys in full as --print_config shows them (e.g. model.init_args.backbone.init_args.pos_embed, "
        "model.init_args.lr) and fix the variant's overrides"
    )


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
            cfg["trainer.enable_progress_bar"] = False  # the sweep shows every run's progress itself
            cfg.seed_everything = seed
            if has_data_seed and "data.init_args.seed" not in variant.overrides:
                cfg["data.init_args.seed"] = seed
            runs.append(Run(variant, seed, rdir, cfg))
    return runs


@contextmanager
def _raising(parser) -> Iterator[None]:
    """Parser errors raise instead of exiting, so they become ConfigErrors naming the variant."""
    before, parser.exit_on_error = parser.exit_on_error, False
    try:
        yield
    finally:
        parser.exit_on_error = before


def validate_runs(parser, runs: list[Run]) -> None:
    """Parse every run's config with the sweep's (fit) parser, build each variant's model, data module and callbacks
    once, check that the data is there (prepare_data may download or extract it, as Lightning would at the start of the
    run) and let each callback with a `check(datamodule)` check its options against the data; nothing is trained."""
    built: set[str] = set()
    for run in runs:
        with _raising(parser):
            try:
                cfg = parser.parse_object(run.args())
            except (ArgumentError, TypeError, ValueError) as err:
                raise ConfigError(
                    f"ablation variant {run.variant.name!r} (seed {run.seed}): its overrides "
                    f"{run.variant.overrides} do not parse: {condense(str(err))}. Fix the variant's values"
                ) from err
        if run.variant.name in built:
            continue
        try:
            init = parser.instantiate_classes(cfg)
            if is_primary_process(per_machine=True):  # one process per machine touches the files
                init.data.prepare_data()
                getattr(init.data, "class_names", None)  # image folders: the train split and its class folders exist
                for callback in init.trainer.get("callbacks") or []:
                    if callable(getattr(callback, "check", None)):
                        callback.check(init.data)
        except ValueError as err:  # a ConfigError, or jsonargparse's ValueError around one raised by a constructor
            raise ConfigError(f"ablation variant {run.variant.name!r}: {config_error_in(err) or err}") from err
        built.add(run.variant.name)


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
