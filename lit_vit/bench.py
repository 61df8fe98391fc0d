"""`python -m lit_vit bench`: training / inference throughput of a backbone (against timm for ViT and hybrid) and data
throughput.

Three modes, any combination in one call:

- ``train``: one optimiser step per iteration (forward, cross-entropy, backward, AdamW step) on a fixed random batch;
- ``infer``: forward in eval mode under ``torch.inference_mode``;
- ``data``: a DataModule's training loader alone (decoding and augmentation) for each worker count.

The backbone (any ``torch.nn.Module`` with an ``img_size``) and the DataModule (any ``LightningDataModule``) are
parsed and built by jsonargparse from the classes' own signatures, as ``fit`` builds them: ``--backbone`` /
``--data`` take a class path or a {class_path, init_args} mapping, ``--backbone.<option> VALUE`` sets one constructor
argument and ``--config`` reads both sections from a bench YAML, a fit config or a bare {class_path, init_args}.

For a lit_vit ViT or HybridViT whose architecture timm's ``VisionTransformer`` (with ``HybridEmbed`` over a
``ResNetV2`` for a hybrid) can express (learned 1-D or no position embedding, cls / gap / map pooling), timm's model
is built with the same dimensions and the lit_vit weights, checked to give the same outputs, and timed in the same
process: the two models alternate repeat by repeat (and swap which goes first), so a change in machine load hits both.
Times are medians over the repeats after warm-up; on CUDA every timed window is bracketed by
``torch.cuda.synchronize()``. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on the real
model (attention included; a training step counts forward and backward), and MFU = achieved FLOP/s / peak FLOP/s of
the device (looked up for common GPUs, or given with --peak-tflops).

Every run prints a summary and appends one JSON record to ``--output`` (default: the per-user file
``$XDG_CACHE_HOME/lit_vit/bench.jsonl``, i.e. ``~/.cache/lit_vit/bench.jsonl``; never a file of the repository unless
named); ``--table FILE`` prints the records of a results file as the markdown table used in BENCHMARKS.md.
"""

import argparse
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
import yaml
from jsonargparse import ArgumentParser, Namespace
from torch import nn

from lit_vit.ablation.results import cpu_model
from lit_vit.cli_parser import EpilogFormatter, OneLineErrors
from lit_vit.errors import ConfigError
from lit_vit.perf import count_flops, peak_flops, synchronize

PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
MODES = ("train", "infer", "data")
# The default run: ViT-Ti/16 at 224 px (1000 classes) against timm, small enough for about a minute on 2 CPU cores.
DEFAULT_BACKBONE = {
    "class_path": "lit_vit.models.VisionTransformer",
    "init_args": {"variant": "Ti", "img_size": 224, "patch_size": 16},
}
DEFAULT_DATA = {"class_path": "lit_vit.data.DigitsDataModule"}
JPEG_DATA = {"class_path": "lit_vit.data.ImageFolderDataModule"}  # --jpeg-tree: its root is the generated tree

# --- configuration -----------------------------------------------------------------------------------------------


def find_section(config: dict, key: str) -> dict | None:
    """The {class_path, init_args} of `key` ('backbone' or 'data') in a bench YAML, a fit config or a bare section."""
    if key == "backbone":
        candidates = [config.get("backbone"), ((config.get("model") or {}).get("init_args") or {}).get("backbone")]
        if "class_path" in config and "data" not in config and "model" not in config:
            candidates.append(config)
    else:
        candidates = [config.get("data")]
    for section in candidates:
        if isinstance(section, dict) and "class_path" in section:
            return {"class_path": section["class_path"], "init_args": dict(section.get("init_args") or {})}
    return None


def load_config(path: str | None) -> dict:
    if path is None:
        return {}
    if not Path(path).is_file():
        raise ConfigError(f"--config {path}: no such file; give a YAML with a backbone (class_path / init_args)")
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise ConfigError(
            f"--config {path}: expected a mapping (backbone / data sections), got {type(config).__name__}"
        )
    return config


def parse_args(argv: list[str]) -> tuple[ArgumentParser, Namespace]:
    """The parsed command line. The --config file's backbone and data sections (or the defaults) come first, as if
    given as `--backbone {...} --data {...}` before the user's arguments, so `--backbone.<option>` overrides them."""
    parser = build_parser()
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--config")
    early.add_argument("--jpeg-tree")
    early.add_argument("--mode", nargs="+", default=[])
    known, _ = early.parse_known_args(argv)
    config = load_config(known.config)
    given = {arg.split("=", 1)[0] for arg in argv}
    sections = {"backbone": find_section(config, "backbone"), "data": find_section(config, "data")}
    # a default only where neither the YAML nor the command line names a class (the class of --backbone / --data
    # would inherit the default's options of the same name otherwise)
    if sections["backbone"] is None and "--backbone" not in given:
        sections["backbone"] = DEFAULT_BACKBONE
    if sections["data"] is None and "--data" not in given and "data" in known.mode:
        sections["data"] = JPEG_DATA if known.jpeg_tree is not None else DEFAULT_DATA
    head = [arg for key, section in sections.items() if section for arg in (f"--{key}", json.dumps(section))]
    return parser, parser.parse_args([*head, *argv])


def instantiate(parser: ArgumentParser, cfg: Namespace, key: str) -> Any:
    """The backbone or the DataModule of a parsed config, built by jsonargparse (the other one is left unbuilt)."""
    only = cfg.clone()
    for other in ("backbone", "data"):
        if other != key:
            only[other] = None
    return parser.instantiate_classes(only)[key]


def set_init_arg(section: Namespace, name: str, value: Any, flag: str) -> None:
    if name not in section.init_args:
        raise ConfigError(
            f"{flag} sets the DataModule's {name}, but {section.class_path} has no {name} argument; use a DataModule "
            f"that takes it (e.g. {JPEG_DATA['class_path']}) or leave {flag} out"
        )
    section.init_args[name] = value


# --- models ------------------------------------------------------------------------------------------------------


class ViltITM(nn.Module):
    """A ViLT as an image classifier for timing: image-text matching logits (2 classes) of each image paired with a
    fixed random caption of max_text_len tokens (full pixel mask, so patch sampling applies as in training)."""

    def __init__(self, vilt: nn.Module) -> None:
        super().__init__()
        self.vilt = vilt
        self.num_classes, self.in_chans = 2, vilt.patch_embed.proj.in_channels
        self.img_size = tuple(g * p for g, p in zip(vilt.grid, vilt.patch_embed.patch_size))
        ids = torch.randint(1, vilt.vocab_size, (1, vilt.max_text_len), generator=torch.Generator().manual_seed(0))
        self.register_buffer("text_ids", ids, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        ids = self.text_ids.expand(image.shape[0], -1)
        return self.vilt.itm_logits(self.vilt(ids, torch.ones_like(ids), image))


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) the backbone expects, from its patch embedding and `img_size`."""
    size = getattr(model, "img_size", None)
    if size is None:
        raise ConfigError(f"{type(model).__name__} has no img_size attribute; the bench cannot size its input batch")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    chans = getattr(model, "in_chans", None) or (convs[0].in_channels if convs else 3)
    h, w = (size, size) if isinstance(size, int) else size
    return int(chans), int(h), int(w)


def timm_hybrid_backbone(embed: nn.Module) -> nn.Module:
    """timm's ResNet of a lit_vit HybridEmbed: the ResNetV2 (or the bare stem) that timm's hybrids build."""
    from functools import partial

    from timm.layers import GroupNormAct, StdConv2d, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2, create_resnetv2_stem

    same = embed.padding == "same"
    conv = partial(StdConv2dSame if same else StdConv2d, eps=1e-8)
    norm = partial(GroupNormAct, num_groups=embed.num_groups)
    common = dict(stem_type="same" if same else "", preact=False, conv_layer=conv, norm_layer=norm)
    if not embed.layers:
        return create_resnetv2_stem(embed.in_chans, out_chs=embed.stem_width, **common)
    return ResNetV2(
        layers=embed.layers, channels=embed.widths, num_classes=0, global_pool="", in_chans=embed.in_chans,
        stem_chs=embed.stem_width, **common,
    )  # fmt: skip


def timm_twin(model: nn.Module) -> tuple[nn.Module | None, str]:
    """timm's VisionTransformer (with timm's HybridEmbed for a HybridViT) with `model`'s architecture and weights,
    or None and the reason."""
    from lit_vit.models import HybridViT, VisionTransformer

    if type(model) not in (VisionTransformer, HybridViT):
        name = type(model.vilt if isinstance(model, ViltITM) else model).__name__
        return None, f"no timm counterpart for {name}"
    pos = type(model.pos_embed).__name__
    kinds = {"LearnedPosEmbed1d": "learn", "PosEmbed": "none"}
    if pos not in kinds:
        return None, f"timm's VisionTransformer has no {pos} position embedding"
    try:
        import timm.models.vision_transformer as timm_vit
    except ImportError:
        return None, "timm is not installed (pip install timm)"
    block = model.blocks[0] if len(model.blocks) else None
    if block is not None and abs(block.attn.scale - block.attn.head_dim**-0.5) > 1e-12:
        return None, "qk_scale differs from head_dim ** -0.5, which timm cannot express"
    if isinstance(model, HybridViT):
        from functools import partial

        from timm.layers import HybridEmbed

        embed = dict(
            patch_size=model.patch_embed.feature_patch,
            in_chans=model.in_chans,
            embed_layer=partial(HybridEmbed, backbone=timm_hybrid_backbone(model.patch_embed)),
        )
    else:
        embed = dict(patch_size=model.patch_embed.patch_size, in_chans=model.patch_embed.proj.in_channels)
    twin = timm_vit.VisionTransformer(
        img_size=model.img_size,
        num_classes=model.num_classes,
        global_pool={"cls": "token", "gap": "avg", "map": "map"}[model.pool],
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=block.attn.num_heads if block is not None else 1,
        mlp_ratio=block.mlp.fc1.out_features / model.embed_dim if block is not None else 4.0,
        qkv_bias=block.attn.qkv.bias is not None if block is not None else True,
        class_token=model.cls_token is not None,
        pos_embed=kinds[pos],
        **embed,
    )
    state = {("pos_embed" if k == "pos_embed.pos_embed" else k): v for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=True)
    return twin, ""


# --- timing ------------------------------------------------------------------------------------------------------


def autocast(device: torch.device, precision: str):
    if precision == "32-true":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


class Runner:
    """One model with its optimiser and a fixed batch; `step()` runs one training step or one inference forward."""

    def __init__(
        self, model: nn.Module, mode: str, x: torch.Tensor, y: torch.Tensor, precision: str, fused: bool = True
    ) -> None:
        self.model, self.mode, self.x, self.y, self.precision = model, mode, x, y, precision
        device = x.device
        self.optimizer = None
        if mode == "train":
            model.train()
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=fused)
        else:
            model.eval()
        self.scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" and mode == "train" else None

    def step(self) -> None:
        device = self.x.device
        if self.mode == "infer":
            with torch.inference_mode(), autocast(device, self.precision):
                self.model(self.x)
            return
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(device, self.precision):
            loss = F.cross_entropy(self.model(self.x), self.y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()

    def timed(self, steps: int) -> float:
        """Seconds per step over `steps` steps (synchronised before and after on CUDA)."""
        device = self.x.device
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.step()
        synchronize(device)
        return (time.perf_counter() - t0) / steps


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def fixed_batch(args: Namespace, device: torch.device, shape, num_classes: int):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, *shape, generator=gen).to(device)
    y = torch.randint(0, max(num_classes, 1), (args.batch_size,), generator=gen).to(device)
    return x, y


def bench_models(models: dict[str, nn.Module], mode: str, args: Namespace, batch, flops: dict[str, int]) -> dict:
    """Alternate the models repeat by repeat; medians after warm-up."""
    x, y = batch
    device = x.device
    runners = {name: Runner(m, mode, x, y, args.precision, args.fused) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    memory: dict[str, float] = dict.fromkeys(models, 0.0)
    names = list(models)
    for r in range(args.warmup + args.repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            t = runners[name].timed(args.steps)
            memory[name] = max(memory[name], peak_memory_mb(device))
            if r >= args.warmup:
                times[name].append(t)
    peak, peak_source = peak_flops(device, args.precision, args.peak_tflops)
    out = {}
    for name in names:
        median = statistics.median(times[name])
        achieved = flops[name] / median
        out[name] = {
            "step_time_ms": median * 1e3,
            "step_time_ms_min": min(times[name]) * 1e3,
            "step_time_ms_all": [t * 1e3 for t in times[name]],  # unrounded: the ratios below are computed from these
            "images_per_s": args.batch_size / median,
            "flops_per_step": flops[name],
            "tflops_per_s": achieved / 1e12,
            "mfu": achieved / peak if peak else None,
            "peak_memory_mb": memory[name] if device.type == "cuda" else None,
        }
    if device.type != "cuda":
        out["process_peak_rss_mb"] = peak_memory_mb(device)
    out["peak_flops"] = peak
    out["peak_flops_source"] = peak_source
    if "timm" in out:
        # three estimates of lit_vit / timm throughput; under a noisy shared machine the paired one is the most robust:
        # each repeat times the two models back to back, so a pair shares the machine's load of that moment
        out["ratio_lit_vit_over_timm"] = out["lit_vit"]["images_per_s"] / out["timm"]["images_per_s"]
        out["ratio_paired_median"] = statistics.median(t / o for o, t in zip(times["lit_vit"], times["timm"]))
        out["ratio_best"] = min(times["timm"]) / min(times["lit_vit"])
    return out


# --- data pipeline -----------------------------------------------------------------------------------------------


def write_jpeg_tree(root: Path, num_images: int, size: int, num_classes: int = 4) -> Path:
    """An ImageFolder tree (train/<class>/*.jpg, val/<class>/*.jpg) of smooth random colour images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", num_images), ("val", max(num_classes, num_images // 10))):
        for i in range(n):
            folder = root / split / f"class_{i % num_classes}"
            folder.mkdir(parents=True, exist_ok=True)
            low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(low).resize((size, size), Image.BICUBIC)
            img.save(folder / f"{i:05d}.jpg", quality=90)
    return root


def bench_data(parser: ArgumentParser, cfg: Namespace) -> dict:
    """Images/s of the training loader (decode + augment + collate) per worker count."""
    results = {}
    for workers in cfg.workers:
        run = cfg.clone()
        set_init_arg(run.data, "num_workers", workers, "--workers")
        if "persistent_workers" in run.data.init_args:  # the workers end with each count's loader
            run.data.init_args.persistent_workers = False
        if cfg.data_batch_size is not None:
            set_init_arg(run.data, "batch_size", cfg.data_batch_size, "--data-batch-size")
        dm = instantiate(parser, run, "data")
        dm.prepare_data()
        dm.setup("fit")
        loader = dm.train_dataloader()
        it = iter(loader)
        t0 = time.perf_counter()
        next(it)
        first = time.perf_counter() - t0
        images, batches, t0 = 0, 0, time.perf_counter()
        for batch in it:
            images += len(batch[0])
            batches += 1
            if batches >= cfg.data_batches:
                break
        elapsed = time.perf_counter() - t0
        if batches == 0:
            raise ConfigError(
                f"the training loader of {cfg.data.class_path} gave only one batch; use a smaller --data-batch-size"
            )
        results[str(workers)] = {
            "images_per_s": images / elapsed,
            "batches": batches,
            "batch_size": dm.batch_size,
            "first_batch_s": first,
            "img_size": list(dm.img_size),
        }
        del it, loader
    return results


# --- records -----------------------------------------------------------------------------------------------------


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("timm", "lightning", "torchvision"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def environment(device: torch.device) -> dict:
    env = {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "versions": versions(),
    }
    return env


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def short_config(spec: dict) -> str:
    args = spec["init_args"]
    keys = ("variant", "embed_dim", "depth", "num_heads", "patch_size", "img_size", "pool", "pos_embed")
    desc = ", ".join(f"{k}={args[k]}" for k in keys if args.get(k) is not None)
    return f"{spec['class_path'].rsplit('.', 1)[-1]}({desc})"


def table(records: list[dict]) -> str:
    """Markdown rows: one per (record, mode), lit_vit and timm side by side."""
    lines = [
        "| date (UTC) | device | threads | load avg | model | mode | batch | precision | compile | lit_vit img/s | "
        "timm img/s | ratio (medians) | ratio (pairs) | lit_vit step ms | TFLOP/s | MFU | peak mem MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        env, cfg = rec["environment"], rec["config"]
        device = env["gpu"] or env["cpu_model"]
        for mode in ("train", "infer"):
            res = rec["results"].get(mode)
            if not res:
                continue
            ours, timm = res["lit_vit"], res.get("timm")
            mfu = f"{ours['mfu']:.1%}" if ours["mfu"] is not None else "n/a"
            mem = ours["peak_memory_mb"] if ours["peak_memory_mb"] is not None else res.get("process_peak_rss_mb")
            mem_s = f"{mem:.0f}" + ("" if ours["peak_memory_mb"] is not None else " (RSS)")
            timm_ips = f"{timm['images_per_s']:.1f}" if timm else "n/a"
            model = cfg["model"] + (f" [{rec['label']}]" if rec.get("label") else "")
            ratio = f"{res['ratio_lit_vit_over_timm']:.3f}" if timm else "n/a"
            paired = f"{res['ratio_paired_median']:.3f}" if timm and "ratio_paired_median" in res else "n/a"
            lines.append(
                f"| {rec['date'][:16]} | {device} | {env['torch_threads']} | {rec['load_average_before'][0]} | "
                f"{model} | {mode} | {cfg['batch_size']} | {cfg['precision']} | {cfg['compile']} | "
                f"{ours['images_per_s']:.1f} | {timm_ips} | {ratio} | {paired} | {ours['step_time_ms']:.1f} | "
                f"{ours['tflops_per_s']:.3f} | {mfu} | {mem_s} |"
            )
    return "\n".join(lines)


def data_table(records: list[dict]) -> str:
    lines = [
        "| date (UTC) | device | load avg | data | batch | workers | img/s | first batch s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        res = rec["results"].get("data")
        if not res:
            continue
        for workers, r in res.items():
            lines.append(
                f"| {rec['date'][:16]} | {rec['environment']['cpu_model']} | {rec['load_average_before'][0]} | "
                f"{rec['config']['data']} | {r['batch_size']} | {workers} | {r['images_per_s']:.0f} | "
                f"{r['first_batch_s']:.2f} |"
            )
    return "\n".join(lines)


# --- command line ------------------------------------------------------------------------------------------------


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
        description=__doc__.split("\n\n")[0],
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
    run.add_argument("--warmup", type=int, default=1, help="untimed repeats per model (compilation happens here)")
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
    for name in ("batch_size", "repeats", "steps", "data_batches"):
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


def run(parser: ArgumentParser, args: Namespace, argv: list[str]) -> dict:
    check_args(args)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.matmul_precision:
        torch.set_float32_matmul_precision(args.matmul_precision)
    record = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m lit_vit bench " + shlex.join(argv),
        "label": args.label,
        "load_average_before": load_average(),
        "environment": environment(device),
        "config": {
            "batch_size": args.batch_size,
            "precision": args.precision,
            "compile": args.compile,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "steps": args.steps,
            "fused_adamw": args.fused,
        },
        "results": {},
    }
    model_modes = [m for m in args.mode if m != "data"]
    if model_modes:
        spec = args.backbone.as_dict()
        torch.manual_seed(0)
        ours = instantiate(parser, args, "backbone")
        ours = (ViltITM(ours) if hasattr(ours, "itm_logits") else ours).to(device)
        shape = input_shape(ours)
        num_classes = getattr(ours, "num_classes", 1000)
        record["config"].update(model=short_config(spec), backbone=spec, input_shape=list(shape))
        record["params"] = {"lit_vit": sum(p.numel() for p in ours.parameters())}
        models: dict[str, nn.Module] = {"lit_vit": ours}
        twin, why = timm_twin(ours) if args.timm else (None, "--no-timm")
        if twin is not None:
            twin = twin.to(device)
            record["params"]["timm"] = sum(p.numel() for p in twin.parameters())
            ours.eval(), twin.eval()
            with torch.no_grad():
                probe = torch.randn(2, *shape, device=device)
                record["timm_max_abs_diff"] = (ours(probe) - twin(probe)).abs().max().item()
            models["timm"] = twin
        record["timm_skipped"] = why or None
        batch = fixed_batch(args, device, shape, num_classes)
        # FLOPs are counted eagerly, before compilation (FlopCounterMode does not see inside compiled graphs)
        flops = {
            mode: {n: count_flops(m, *batch, train=mode == "train") for n, m in models.items()} for mode in model_modes
        }
        if args.compile:
            for m in models.values():
                m.compile()
        for mode in model_modes:
            record["results"][mode] = bench_models(models, mode, args, batch, flops[mode])
    if "data" in args.mode:
        with tempfile.TemporaryDirectory(prefix="lit_vit_bench_") as tmp:
            data_args = args.clone()
            if args.jpeg_tree:
                root = write_jpeg_tree(Path(tmp), args.jpeg_tree, args.jpeg_size)
                set_init_arg(data_args.data, "root", str(root), "--jpeg-tree")
            record["config"]["data"] = short_data(data_args.data, args)
            record["config"]["data_spec"] = data_args.data.as_dict()
            record["results"]["data"] = bench_data(parser, data_args)
    record["load_average_after"] = load_average()
    return record


def short_data(spec: Namespace, args: Namespace) -> str:
    name = spec.class_path.rsplit(".", 1)[-1]
    init = spec.init_args
    desc = [f"img_size={init.get('img_size', 'default')}", f"augment={init.get('augment', 'default')}"]
    if args.jpeg_tree:
        desc.append(f"{args.jpeg_tree} JPEGs {args.jpeg_size}px")
    return f"{name}({', '.join(desc)})"


def summary(record: dict) -> str:
    lines = [f"{record['config'].get('model', '')}  ({record['environment']['device']}, "
             f"{record['environment']['torch_threads']} threads, load {record['load_average_before']})"]  # fmt: skip
    if "timm_max_abs_diff" in record:
        lines.append(f"timm twin: same weights, max |output difference| {record['timm_max_abs_diff']:.2e}")
    elif record.get("timm_skipped"):
        lines.append(f"timm not timed: {record['timm_skipped']}")
    for mode in ("train", "infer"):
        res = record["results"].get(mode)
        if not res:
            continue
        for name in ("lit_vit", "timm"):
            if name in res:
                r = res[name]
                mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] is not None else ""
                mem = f", peak {r['peak_memory_mb']:.0f} MB" if r["peak_memory_mb"] is not None else ""
                lines.append(
                    f"{mode:5s} {name:7s} {r['images_per_s']:9.1f} img/s  {r['step_time_ms']:8.2f} ms/step  "
                    f"{r['tflops_per_s']:.3f} TFLOP/s{mfu}{mem}"
                )
        if "ratio_lit_vit_over_timm" in res:
            lines.append(
                f"{mode:5s} lit_vit / timm throughput: {res['ratio_lit_vit_over_timm']:.3f} (medians), "
                f"{res['ratio_paired_median']:.3f} (median of back-to-back pairs), {res['ratio_best']:.3f} (best steps)"
            )
        if "process_peak_rss_mb" in res:
            lines.append(f"{mode:5s} process peak RSS {res['process_peak_rss_mb']:.0f} MB (the whole bench process)")
        if res["peak_flops"] is None:
            lines.append(f"{mode:5s} MFU: {res['peak_flops_source']}")
    for workers, r in record["results"].get("data", {}).items():
        lines.append(f"data  {workers} workers: {r['images_per_s']:.0f} img/s (first batch {r['first_batch_s']:.2f} s)")
    if "data" in record["results"] and "train" in record["results"]:
        need = record["results"]["train"]["lit_vit"]["images_per_s"]
        best = max(r["images_per_s"] for r in record["results"]["data"].values())
        verdict = "keeps up with" if best >= need else "would starve"
        lines.append(f"data: the fastest loader setting ({best:.0f} img/s) {verdict} training ({need:.0f} img/s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, args = parse_args(argv)
    if args.table:
        records = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line.strip()]
        print(table(records))
        print()
        print(data_table(records))
        return
    record = run(parser, args, argv)
    print(summary(record))
    if not args.no_save:
        out = Path(args.output) if args.output else default_output()
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"appended to {out}")
