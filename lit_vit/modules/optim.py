"""Optimisation shared by every LightningModule: parameter groups, the optimiser and the warm-up schedules.

Parameter groups: no weight decay on biases, norms (every parameter with ndim <= 1) and what the model lists in
`no_weight_decay()` (position tables, tokens); a peak lr of their own for named top-level modules (a head, the
position embedding) and, with layer-wise lr decay (BEiT / MAE), for every layer of the grouping the model declares in
`layer_groups()`. Schedules are multipliers of the peak lr for `torch.optim.lr_scheduler.LambdaLR`, stepped per
optimiser step.
"""

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from lit_vit.errors import ConfigError


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine decay to `min_lr_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_linear(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: linear warm-up from ~0 to 1 over `warmup_steps`, then linear decay to 0 at `total_steps`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def layer_ids(model: nn.Module) -> dict[str, int]:
    """The layer of every parameter name as the model declares it (`layer_groups()`: stem 0, block i i + 1, the
    read-out last); a model without the declaration cannot use layer decay."""
    if not callable(getattr(model, "layer_groups", None)):
        raise ConfigError(
            f"layer_decay needs a backbone that declares its layers (layer_groups(), as ViT, T2T-ViT, the hybrid and "
            f"ViLT do); {type(model).__name__} has none; remove --model.init_args.layer_decay"
        )
    return model.layer_groups()


def layer_decay_lrs(model: nn.Module, lr: float, decay: float) -> dict[str, float]:
    """Parameter name -> lr * decay ** (last - layer) (BEiT / MAE), `last` the read-out's layer (depth + 1)."""
    ids = layer_ids(model)
    last = max(ids.values(), default=0)
    return {name: lr * decay ** (last - i) for name, i in ids.items()}


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    *,
    layer_decay: float | None = None,
    module_lrs: Sequence[tuple[str, float]] = (),
    decay_first: bool = True,
    every_group_lr: bool = False,
) -> list[dict]:
    """Optimiser groups of the trainable parameters of `model`, one per (weight decay, peak lr).

    Args:
        model: the network; `no_weight_decay()`, when it has one, names parameters kept from weight decay besides
            those with ndim <= 1.
        lr: the optimiser's peak lr.
        weight_decay: the decay of the decayed group (the others get 0).
        layer_decay: layer-wise lr decay over the model's `layer_groups()`; a parameter whose decayed lr equals `lr`
            stays in the main group.
        module_lrs: (top-level module name, its peak lr), taking precedence over the layer decay and over earlier
            entries; these parameters get groups of their own even when the lr equals `lr`.
        decay_first: order the groups decayed first, then not decayed (each by first appearance of its lr), as the
            image classifier always has; False: by first appearance of (decay, lr) in `named_parameters()`, as the
            ViLT modules have. The order is part of an optimiser state in a checkpoint, so it is kept per module.
        every_group_lr: write "lr" into every group (else only where it differs from the optimiser's).
    """
    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    own_lr: dict[str, float] = {}
    if layer_decay is not None:
        own_lr.update({n: v for n, v in layer_decay_lrs(model, lr, layer_decay).items() if v != lr})
    entries = []  # (parameter, decayed, its own lr or None)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        own = own_lr.get(name)
        for module, module_lr in module_lrs:
            if name.startswith(module + "."):
                own = module_lr
        entries.append((p, not (p.ndim <= 1 or name in skip), own))
    if decay_first:
        entries.sort(key=lambda e: not e[1])  # stable: the order within decayed / not decayed stays
    groups: dict[tuple[bool, float | None], dict] = {}
    for p, decayed, own in entries:
        group = groups.get((decayed, own))
        if group is None:
            group = groups[(decayed, own)] = {"params": [], "weight_decay": weight_decay if decayed else 0.0}
            if own is not None or every_group_lr:
                group["lr"] = lr if own is None else own
        group["params"].append(p)
    return list(groups.values())


def build_optimizer(
    groups: list[dict],
    name: str,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    momentum: float = 0.9,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """AdamW (betas, eps; fused: one kernel for all parameters) or SGD with momentum."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    raise ConfigError(f"unknown optimizer {name!r}; choose adamw or sgd")


def step_schedule(optimizer: torch.optim.Optimizer, multiplier: Callable[[int], float]) -> dict:
    """Lightning's lr_scheduler entry: the lr of every group is its peak times `multiplier(step)`, per optimiser step.
    A plain function or lambda (LambdaLR keeps no state of it in checkpoints)."""
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier), "interval": "step"}


def cosine_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> dict:
    """Linear warm-up, then cosine decay to min_lr_ratio of the peak (`warmup_cosine`)."""
    return step_schedule(optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio))


def linear_schedule(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> dict:
    """Linear warm-up, then linear decay to 0 (`warmup_linear`, BERT's / ViLT's schedule)."""
    return step_schedule(optimizer, lambda step: warmup_linear(step, warmup_steps, total_steps))
