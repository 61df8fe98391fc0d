"""The `ablation:` section of an experiment YAML: named variants (config overrides) x seeds."""

import re
from dataclasses import dataclass, field
from typing import Any

from lit_vit.errors import ConfigError

# keys the sweep sets itself for every run
RESERVED_KEYS = ("trainer.default_root_dir", "seed_everything", "ckpt_path", "ablation")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class Variant:
    """One arm of an ablation.

    Args:
        name: the variant's name; also its folder `<default_root_dir>/<name>/`.
        overrides: config keys as printed by --print_config (e.g. model.init_args.backbone.init_args.pos_embed)
            mapped to this variant's values.
    """

    name: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ablation:
    """A sweep: every variant is trained once per seed as an ordinary run in `<default_root_dir>/<variant>/seed=<n>/`.

    Args:
        variants: the variants, each a name and its config overrides.
        seeds: seeds of each variant's runs (seed_everything, and the data order / augmentation seed when the data
            module has one).
        workers: runs trained at once on this machine, each by its own process (`python -m lit_vit sweep --config
            <sweep dir>/sweep.yaml --ablation.workers 1`) that claims runs one at a time; on CPU each worker gets
            cpu_count / workers torch threads (or num_threads), on GPUs its own slice of the visible devices.
        quiet: print no progress (on a terminal a live view of every run, otherwise one line per event: a run
            started, every few epochs, done with its numbers, failed with its error); the final table is printed
            either way.
    """

    variants: list[Variant]
    seeds: list[int] = field(default_factory=lambda: [0])
    workers: int = 1
    quiet: bool = False

    def __post_init__(self) -> None:
        self.variants = [v if isinstance(v, Variant) else Variant(**dict(v)) for v in self.variants]
        if not self.variants:
            raise ConfigError("ablation.variants is empty; list at least one {name, overrides} entry")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ConfigError(f"ablation.workers must be a positive integer, got {self.workers!r}; e.g. workers: 2")
        if not self.seeds:
            raise ConfigError("ablation.seeds is empty; give at least one seed, e.g. seeds: [0, 1]")
        names = [v.name for v in self.variants]
        for name in names:
            if not _NAME.match(name):
                raise ConfigError(
                    f"ablation variant name {name!r} is not usable as a folder name; use letters, digits, _ . + -"
                )
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"ablation variant names must be unique; repeated: {', '.join(duplicates)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"ablation.seeds {self.seeds} repeats a seed; list each seed once")
        for v in self.variants:
            for key in v.overrides:
                if key in RESERVED_KEYS or key.startswith("ablation."):
                    raise ConfigError(
                        f"ablation variant {v.name!r} overrides {key!r}, which the sweep sets for every run "
                        f"({', '.join(RESERVED_KEYS)}); remove it from the variant"
                    )

    @classmethod
    def from_config(cls, value: Any) -> "Ablation":
        """From the parsed config (a jsonargparse Namespace, a dict or an Ablation)."""
        if isinstance(value, Ablation):
            return value
        data = value.as_dict() if hasattr(value, "as_dict") else dict(value)
        return cls(
            variants=[Variant(**dict(v)) for v in data["variants"]],
            seeds=list(data.get("seeds") or [0]),
            workers=data.get("workers", 1),
            quiet=bool(data.get("quiet", False)),
        )
