"""`python -m lit_vit bench`: parse, run the modes asked for, print and append the record."""

import json
import shlex
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from jsonargparse import ArgumentParser, Namespace
from torch import nn

from lit_vit.bench.config import instantiate, parse_args, set_init_arg
from lit_vit.bench.data import bench_data, write_jpeg_tree
from lit_vit.bench.options import check_args, default_output
from lit_vit.bench.reports import data_table, environment, load_average, short_config, short_data, summary, table
from lit_vit.bench.step import bench_step, step_config_path
from lit_vit.bench.timing import bench_models, fixed_batch
from lit_vit.bench.twins import ViltITM, input_shape, timm_twin
from lit_vit.perf import count_flops


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
    model_modes = [m for m in args.mode if m not in ("data", "step")]
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
    if "step" in args.mode:
        record["results"]["step"] = bench_step(args, argv)  # reads and checks the fit config
        record["config"]["step_config"] = step_config_path(args.config)
    record["load_average_after"] = load_average()
    return record


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
