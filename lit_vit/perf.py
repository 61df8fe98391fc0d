"""FLOP counting and peak FLOP/s for throughput and model-FLOPs-utilisation (MFU) reports (bench and callback)."""

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

# Dense (no sparsity) peak tensor-core TFLOP/s from NVIDIA's datasheets, by compute dtype. "tf32" applies to fp32
# training when matmuls may use TF32 (torch.set_float32_matmul_precision("high" or "medium")), "fp32" otherwise.
# Matched against torch.cuda.get_device_name() in this order: the first key in the lower-cased name wins.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "h100 pcie": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "h100 nvl": {"bf16": 835.0, "fp16": 835.0, "tf32": 417.5, "fp32": 60.0},
    "gh200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "h100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM: "NVIDIA H100 80GB HBM3"
    "h200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},  # SXM
    "a100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "l40s": {"bf16": 362.05, "fp16": 362.05, "tf32": 183.0, "fp32": 91.6},
    "l4": {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
    "v100": {"fp16": 125.0, "fp32": 15.7},
}

PRECISION_DTYPE = {"bf16-mixed": "bf16", "bf16-true": "bf16", "16-mixed": "fp16", "16-true": "fp16"}


def peak_flops(device: torch.device, precision: str, override_tflops: float | None = None) -> tuple[float | None, str]:
    """Peak FLOP/s of one device for MFU and where the number comes from; None when unknown (e.g. any CPU)."""
    if override_tflops is not None:
        return override_tflops * 1e12, "given peak_tflops"
    if device.type != "cuda":
        return None, "no peak FLOP/s known for this device (give the peak in TFLOP/s to get MFU)"
    name = torch.cuda.get_device_name(device).lower()
    dtype = PRECISION_DTYPE.get(str(precision))
    if dtype is None:
        dtype = "fp32" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    for key, table in PEAK_TFLOPS.items():
        if key in name:
            if dtype in table:
                return table[dtype] * 1e12, f"table: {key} {dtype} dense"
            return None, f"{key} has no {dtype} entry in the peak table (give the peak in TFLOP/s)"
    return None, f"{name!r} is not in the peak table (give the peak in TFLOP/s)"


def count_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None, train: bool = True) -> int:
    """FLOPs of one step of `model` on batch `x`, counted by FlopCounterMode (2 per multiply-add, attention included).

    A training step counts forward and backward (gradients w.r.t. the trainable parameters, via autograd.grad, so
    the model's `.grad` fields are left untouched); the cross-entropy against `y` (or a sum) is the loss. `forward`
    is called directly, so a module compiled in place with `module.compile()` is counted eagerly.

    Attention is counted through PyTorch's math path of `scaled_dot_product_attention` (two batched matmuls, the
    same count as the fused kernels' formulas): which fused CPU / GPU kernels FlopCounterMode knows differs between
    torch releases (torch 2.14's CPU flash kernel is not counted), the matmuls of the math path are counted by all.
    """
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.train(train)
    try:
        with counter, sdpa_kernel(SDPBackend.MATH):
            if train:
                out = model.forward(x)
                loss = torch.nn.functional.cross_entropy(out, y) if y is not None else out.float().sum()
                params = [p for p in model.parameters() if p.requires_grad]
                torch.autograd.grad(loss, params, allow_unused=True)
            else:
                with torch.no_grad():
                    model.forward(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a host clock measures it (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
