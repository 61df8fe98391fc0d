"""The ResNet of the ViT paper's hybrids (section 3.1): BiT-style ResNet-v2 layout without pre-activation.

Weight-standardised convolutions (StdConv2d) with GroupNorm, a 7x7 stride-2 stem conv and a 3x3 stride-2 max pool,
then bottleneck stages (stride 1 for the first, 2 for the others). Module and parameter names follow timm's
`ResNetV2(preact=False)` / `create_resnetv2_stem` as used by `vision_transformer_hybrid.py`, so timm hybrid weights
load without renaming. Padding is TensorFlow's input-size dependent "same" (timm's hybrid default, asymmetric when
stride > 1) or PyTorch's symmetric k // 2.
"""

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_vit.errors import ConfigError

PADDINGS = ("same", "symmetric")
STD_CONV_EPS = 1e-8  # timm's hybrids build StdConv2dSame / StdConv2d with eps 1e-8 (1e-6 is the layer's default)


def same_padding(size: int, kernel: int, stride: int) -> int:
    """Total TensorFlow 'SAME' padding of one side: the output has ceil(size / stride) positions."""
    return max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)


def pad_same(x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int], value: float = 0.0) -> torch.Tensor:
    """Pad `x` for 'SAME' output size; an odd total puts the extra pixel at the bottom / right (as TensorFlow)."""
    ph = same_padding(x.shape[-2], kernel[0], stride[0])
    pw = same_padding(x.shape[-1], kernel[1], stride[1])
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% below `v` (timm / TF rule)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class StdConv2d(nn.Conv2d):
    """Conv2d with weight standardisation (each filter to zero mean, unit variance), no bias; padding "same"
    (TensorFlow, computed from the input size at run time when stride > 1) or "symmetric" (k // 2)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int,
        stride: int = 1,
        padding: str = "same",
        eps: float = STD_CONV_EPS,
    ) -> None:
        # with stride 1 and an odd kernel, 'same' is the symmetric k // 2: no run-time padding needed
        self.dynamic_pad = padding == "same" and not (stride == 1 and kernel_size % 2 == 1)
        static = 0 if self.dynamic_pad else ((stride - 1) + (kernel_size - 1)) // 2
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=static, bias=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size, self.stride)
        # batch_norm over a (1, filters, fan_in) view standardises each filter (biased variance), in one kernel
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, eps=self.eps)
        return F.conv2d(x, w.reshape_as(self.weight), None, self.stride, self.padding)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (eps 1e-5) followed by ReLU unless act is False; parameters named as nn.GroupNorm's."""

    def __init__(self, channels: int, num_groups: int = 32, act: bool = True) -> None:
        if channels % num_groups:
            raise ConfigError(
                f"GroupNorm with {num_groups} groups needs a channel count divisible by it, got {channels}; "
                f"change num_groups (e.g. {math.gcd(channels, num_groups)}) or the widths"
            )
        super().__init__(num_groups, channels, eps=1e-5)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


class MaxPoolSame(nn.Module):
    """3x3 stride-2 max pool with 'same' (padded with -inf, TensorFlow) or symmetric (1 px) padding."""

    def __init__(self, padding: str = "same") -> None:
        super().__init__()
        self.same = padding == "same"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            return F.max_pool2d(pad_same(x, (3, 3), (2, 2), value=-float("inf")), 3, 2)
        return F.max_pool2d(x, 3, 2, padding=1)


class ResNetStem(nn.Module):
    """7x7 stride-2 StdConv - GroupNorm - ReLU - 3x3 stride-2 max pool: stride 4 (timm keys conv, norm)."""

    def __init__(self, in_chans: int, width: int = 64, num_groups: int = 32, padding: str = "same") -> None:
        super().__init__()
        self.conv = StdConv2d(in_chans, width, 7, stride=2, padding=padding)
        self.norm = GroupNormAct(width, num_groups)
        self.pool = MaxPoolSame(padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.norm(self.conv(x)))


class DownsampleConv(nn.Module):
    """The projection shortcut of a stage's first block: 1x1 StdConv (with the block's stride) and GroupNorm."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, num_groups: int, padding: str) -> None:
        super().__init__()
        self.conv = StdConv2d(in_chs, out_chs, 1, stride=stride, padding=padding)
        self.norm = GroupNormAct(out_chs, num_groups, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck (ResNet v1.5: the stride on the 3x3 conv): 1x1 - 3x3 - 1x1, GroupNorm after each,
    ReLU after the residual sum. The middle width is out_chs / 4; `project` gives the shortcut a 1x1 conv (a stage's
    first block always has one, as in timm)."""

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, num_groups: int, padding: str, project: bool = False
    ) -> None:
        super().__init__()
        mid = make_divisible(out_chs * 0.25)
        self.downsample = DownsampleConv(in_chs, out_chs, stride, num_groups, padding) if project else None
        self.conv1 = StdConv2d(in_chs, mid, 1, padding=padding)
        self.norm1 = GroupNormAct(mid, num_groups)
        self.conv2 = StdConv2d(mid, mid, 3, stride=stride, padding=padding)
        self.norm2 = GroupNormAct(mid, num_groups)
        self.conv3 = StdConv2d(mid, out_chs, 1, padding=padding)
        self.norm3 = GroupNormAct(out_chs, num_groups, act=False)
        self.act3 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return self.act3(x + shortcut)


class ResNetStage(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, depth: int, stride: int, num_groups: int, padding: str) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                Bottleneck(in_chs, out_chs, stride, num_groups, padding, project=True)
                if i == 0
                else Bottleneck(out_chs, out_chs, 1, num_groups, padding)
                for i in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """Stem and bottleneck stages; returns the last stage's feature map (stride 4 * 2^(stages - 1)).

    The paper's R50 hybrid keeps three stages, (3, 4, 9) blocks (stage 4's blocks moved into stage 3), stride 16.
    """

    def __init__(
        self,
        layers: tuple[int, ...] | list[int],
        widths: tuple[int, ...] | list[int],
        in_chans: int = 3,
        stem_width: int = 64,
        num_groups: int = 32,
        padding: str = "same",
    ) -> None:
        super().__init__()
        self.stem = ResNetStem(in_chans, stem_width, num_groups, padding)
        chs, stages = stem_width, []
        for i, (depth, width) in enumerate(zip(layers, widths)):
            stages.append(ResNetStage(chs, width, depth, 1 if i == 0 else 2, num_groups, padding))
            chs = width
        self.stages = nn.Sequential(*stages)
        self.num_features = chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


def init_resnet(module: nn.Module) -> None:
    """timm's ResNetV2 init: Kaiming normal (fan_out) convolutions, unit / zero GroupNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_resnet(
    layers: tuple[int, ...] | list[int], widths: tuple[int, ...] | list[int], **options: Any
) -> tuple[nn.Module, int, int]:
    """The CNN part of a hybrid and its (output channels, stride): a ResNetV2 (`options`: its in_chans, stem_width,
    num_groups, padding), or the bare stem when `layers` is empty (timm's R-Ti: then the stem's conv / norm sit
    directly under the returned module, as in timm)."""
    padding = options.get("padding", "same")
    if padding not in PADDINGS:
        raise ConfigError(f"unknown padding {padding!r}; choose one of {', '.join(PADDINGS)}")
    if any(d < 1 for d in layers):
        raise ConfigError(f"every stage needs at least one block, got layers {list(layers)}; drop empty stages")
    if any(w < 1 for w in widths):
        raise ConfigError(f"stage widths must be positive channel counts, got {list(widths)}")
    if len(widths) < len(layers):
        raise ConfigError(
            f"{len(layers)} stages ({list(layers)}) but only {len(widths)} stage widths ({list(widths)}); "
            "give one width per stage"
        )
    if layers:
        net = ResNetV2(layers, widths, **options)
        out, stride = net.num_features, 4 * 2 ** (len(layers) - 1)
    else:
        stem = {"width" if k == "stem_width" else k: v for k, v in options.items()}
        net = ResNetStem(**stem)
        out, stride = net.norm.num_channels, 4
    init_resnet(net)
    return net, out, stride
