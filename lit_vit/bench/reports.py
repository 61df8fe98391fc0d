"""What a run records (environment, versions, load) and prints (summary, markdown tables)."""

import importlib.metadata
import os
import platform

import torch
from jsonargparse import Namespace

from lit_vit.ablation.results import cpu_model
from lit_vit.callbacks.step_profile import format_summary


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


def short_data(spec: Namespace, args: Namespace) -> str:
    name = spec.class_path.rsplit(".", 1)[-1]
    init = spec.init_args
    desc = [f"img_size={init.get('img_size', 'default')}", f"augment={init.get('augment', 'default')}"]
    if args.jpeg_tree:
        desc.append(f"{args.jpeg_tree} JPEGs {args.jpeg_size}px")
    return f"{name}({', '.join(desc)})"


def summary(record: dict) -> str:
    name = record["config"].get("model") or record["config"].get("step_config", "")
    lines = [f"{name}  ({record['environment']['device']}, "
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
    if record["results"].get("step"):
        lines.append(f"step: {record['config']['step_config']}, a short fit")
        lines.append(format_summary(record["results"]["step"]))
    if "data" in record["results"] and "train" in record["results"]:
        need = record["results"]["train"]["lit_vit"]["images_per_s"]
        best = max(r["images_per_s"] for r in record["results"]["data"].values())
        verdict = "keeps up with" if best >= need else "would starve"
        lines.append(f"data: the fastest loader setting ({best:.0f} img/s) {verdict} training ({need:.0f} img/s)")
    return "\n".join(lines)
