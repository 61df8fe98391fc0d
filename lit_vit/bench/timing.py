"""Timing models: one training step or inference forward per call, alternating models repeat by repeat."""

import resource
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from jsonargparse import Namespace
from torch import nn

from lit_vit.perf import peak_flops, synchronize


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
