"""The bench's command line: options, help text and the checks run before anything is built."""

import argparse
import os
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from jsonargparse import ArgumentParser, Namespace
from torch import nn

from lit_vit.cli_parser import EpilogFormatter, OneLineErrors
from lit_vit.errors import ConfigError

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
MODES = ("train", "infer", "data", "step")
DESCRIPTION = (
    "`python -m lit_vit bench`: training / inference throughput of a backbone (against timm for ViT and hybrid) "
    "and data\nthroughput."
)


def default_output() -> Path:
    """Where records go without --output: a per-user file, never the repository's benchmarks/results.jsonl."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "lit_vit" / "bench.jsonl"


class HelpFormatter(EpilogFormatter):
    """EpilogFormatter (the examples keep their line breaks) that leaves out the list of every imported subclass
    (hundreds of nn.Modules from torch and torchvision) that jsonargparse appends to --backbone."""

    def _get_help_string(self, action: argparse.Action) -> str:
        # argparse's per-option hook (ArgumentDefaultsHelpFormatter overrides it too): no public one exists
        text = super()._get_help_string(action)
        head, found, _ = text.partition(", known subclasses: ")
        return head + ")" if found and action.dest in ("backbone", "data") else text


EXAMPLES = """\
examples:
  python -m lit_vit bench
      lit_vit's ViT-Ti/16 (224 px, batch 4) against timm: 20 s on 2 CPU cores, a minute or more when they are busy
  python -m lit_vit bench --backbone.variant B --batch-size 32 --warmup 3 --repeats 10
      the full ViT-B/16 comparison (about 14 min on 2 CPU cores; add --device cuda --precision bf16-mixed on a GPU)
  python -m lit_vit bench --backbone.variant Ti --backbone.img_size 32 --backbone.patch_size 4 \\
      --backbone.num_classes 10 --batch-size 32
  python -m lit_vit bench --config experiments/hybrid_embedded.yaml          (a fit config's backbone)
  python -m lit_vit bench --config benchmarks/imagefolder_224.yaml --mode data --jpeg-tree 256 --workers 0 2
  python -m lit_vit bench --config experiments/ablation_pos.yaml --mode step
      where a training step of a fit config goes: waiting for data, forward, backward, optimiser (a short real fit)
  python -m lit_vit bench --backbone.help lit_vit.models.VisionTransformer    (the backbone's options)
  python -m lit_vit bench --table ~/.cache/lit_vit/bench.jsonl               (records as markdown)
"""


class BenchParser(OneLineErrors, ArgumentParser):
    """jsonargparse's parser with one-line errors, named `python -m lit_vit bench` also in the parsers that
    jsonargparse makes from it for
    --backbone.help / --data.help (as `type(parser)(...)`), whose usage lines would name __main__.py otherwise."""

    def __init__(self, *args: Any, prog: str = "python -m lit_vit bench", **kwargs: Any) -> None:
        super().__init__(*args, prog=prog, **kwargs)


def build_parser() -> BenchParser:
    p = BenchParser(
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--config",
        type=str | None,
        default=None,
        help="YAML holding the backbone (a {class_path, init_args} section, a 'backbone:' key or a fit config's "
        "model.init_args.backbone) and optionally a 'data:' section; --backbone.* / --data.* options override it",
    )
    p.add_subclass_arguments(
        nn.Module,
        "backbone",
        as_group=False,
        required=False,
        default=None,
        help="the model to time: any torch.nn.Module with an img_size (lit_vit.models.VisionTransformer, HybridViT, "
        "T2TViT, vilt.ViLT as image-text matching). Default without --config: VisionTransformer(variant=Ti, "
        "img_size=224, patch_size=16). One option: --backbone.<name> VALUE; all of them: --backbone.help CLASS",
    )
    p.add_subclass_arguments(
        L.LightningDataModule,
        "data",
        as_group=False,
        required=False,
        default=None,
        help="--mode data: the DataModule whose training loader is timed (default lit_vit.data.DigitsDataModule; "
        "with --jpeg-tree lit_vit.data.ImageFolderDataModule); its options: --data.help CLASS",
    )
    run = p.add_argument_group("run")
    run.add_argument("--mode", type=Literal[MODES], nargs="+", default=["train", "infer"])
    run.add_argument("--batch-size", type=int, default=4)
    run.add_argument("--precision", type=Literal[PRECISIONS], default="32-true")
    run.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile both models"
    )
    run.add_argument("--device", type=str, default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--threads", type=int | None, default=None, help="torch CPU threads (default: torch's choice)")
    run.add_argument(
        "--matmul-precision",
        type=Literal["highest", "high", "medium"] | None,
        default=None,
        help="torch.set_float32_matmul_precision (high / medium allow TF32 for 32-true on Ampere and newer)",
    )
    run.add_argument("--warmup", type=int, default=1, help="untimed repeats per model (or steps, --mode step)")
    run.add_argument("--repeats", type=int, default=5, help="timed repeats per model; the median is reported")
    run.add_argument("--steps", type=int, default=1, help="steps per repeat")
    run.add_argument(
        "--fused",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fused AdamW (one kernel for all parameters, as ImageClassifier uses on CUDA and CPU)",
    )
    run.add_argument("--timm", action=argparse.BooleanOptionalAction, default=True, help="also time timm's ViT")
    run.add_argument(
        "--peak-tflops",
        type=float | None,
        default=None,
        help="peak TFLOP/s for MFU (default: looked up for known GPUs)",
    )
    step = p.add_argument_group("step mode (a short real fit of --config, default experiments/quickstart.yaml)")
    step.add_argument(
        "--profile-steps",
        type=int,
        default=30,
        help="--mode step: training steps measured after the --warmup steps (data wait, forward, backward, optimiser)",
    )
    data = p.add_argument_group("data mode")
    data.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts to time")
    data.add_argument("--data-batches", type=int, default=20, help="batches timed per worker count (after the first)")
    data.add_argument("--data-batch-size", type=int | None, default=None, help="override the DataModule's batch_size")
    data.add_argument(
        "--jpeg-tree",
        type=int | None,
        default=None,
        metavar="N",
        help="time the DataModule (default ImageFolderDataModule) over N generated JPEGs in a temporary folder",
    )
    data.add_argument("--jpeg-size", type=int, default=256, help="side of the generated JPEGs")
    out = p.add_argument_group("output")
    out.add_argument(
        "--output",
        type=str | None,
        default=None,
        help="JSON-lines file the record is appended to (default: $XDG_CACHE_HOME/lit_vit/bench.jsonl, i.e. "
        "~/.cache/lit_vit/bench.jsonl; the repository's benchmarks/results.jsonl only when named here)",
    )
    out.add_argument(
        "--label", type=str, default="", help="free-text note stored with the record and shown in the table"
    )
    out.add_argument("--no-save", action="store_true", help="print only, append nothing")
    out.add_argument(
        "--table", type=str | None, default=None, metavar="JSONL", help="print a results file's records as markdown"
    )
    return p


def check_args(args: Namespace) -> None:
    for name in ("batch_size", "repeats", "steps", "data_batches", "profile_steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise ConfigError(f"--warmup must be 0 or more, got {args.warmup}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {args.threads}; leave it unset for torch's choice")
    if any(w < 0 for w in args.workers):
        raise ConfigError(f"--workers must be 0 or more, got {args.workers}")
    if args.jpeg_tree is not None and args.jpeg_tree < 1:
        raise ConfigError(f"--jpeg-tree must be at least 1 (images to generate), got {args.jpeg_tree}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {args.device}: choose cpu or cuda[:N]")
