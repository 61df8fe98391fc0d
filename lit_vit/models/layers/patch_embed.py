import torch
from torch import nn

from lit_vit.errors import ConfigError


def to_2tuple(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    return (int(x[0]), int(x[1]))


def grid_size(img_size: int | tuple[int, int], patch_size: int | tuple[int, int]) -> tuple[int, int]:
    """Patch grid (rows, cols) of an image; fails with a clear message when a side is not a multiple of the patch."""
    (h, w), (ph, pw) = to_2tuple(img_size), to_2tuple(patch_size)
    if h % ph or w % pw or h <= 0 or w <= 0:
        raise ConfigError(
            f"image size {h}x{w} is not divisible by the patch size {ph}x{pw}; "
            f"use an image size that is a multiple of {ph} (e.g. {max(ph, h // ph * ph)}) or another patch size"
        )
    return h // ph, w // pw


class PatchEmbed(nn.Module):
    """Image to patch tokens: a Conv2d with kernel = stride = patch size (ViT paper, eq. 1)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768, bias: bool = True) -> None:
        super().__init__()
        self.patch_size = to_2tuple(patch_size)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = grid_size(tuple(x.shape[-2:]), self.patch_size)
        return self.proj(x).flatten(2).transpose(1, 2), grid
