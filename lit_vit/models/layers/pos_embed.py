"""Position embeddings as swappable parts of a token model.

Every kind is a `PosEmbed` subclass registered under its name with `@register("name")`; the registry is the one list
of kinds (`POS_EMBED_KINDS`, the `pos_embed` choices in --help, the tests and bench read it). A kind overrides what it
needs of the base class's contract:

- ``forward(x, grid)`` adds absolute position information to ``x = [prefix tokens; grid tokens]``;
- ``attn_bias(grid)`` returns an additive attention bias (heads x N x N) or ``None``;
- ``qk_hook(grid)`` returns a function applied to every block's queries and keys (rotary kinds) or ``None``;
- ``table(grid)`` / ``offset_table(grid)`` expose an absolute table (N x D) / a relative bias over offsets for the
  plots, or ``None``;
- ``resize(grid)`` permanently resamples learned tables to a new patch grid (fine-tuning at a new resolution);
- ``stored_grid(state)`` tells the patch grid a state dict of the kind was saved at, so that `resample_state_dict`
  can load weights of any kind saved at one grid into a model built for another (through ``resize``).

A grid that differs from the stored one at forward time is handled by resampling on the fly, so a model trained at
one size evaluates at another without a separate step. Adding a kind is one class in this file.
"""

import math
from collections.abc import Callable
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_vit.errors import ConfigError
from lit_vit.models.layers.attention import QKHook

_KINDS: dict[str, type["PosEmbed"]] = {}


def register(name: str) -> Callable[[type["PosEmbed"]], type["PosEmbed"]]:
    """Class decorator: make a PosEmbed subclass buildable as `pos_embed: <name>`."""

    def add(cls: type["PosEmbed"]) -> type["PosEmbed"]:
        _KINDS[name] = cls
        cls.kind = name
        return cls

    return add


def resample_grid(
    table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], antialias: bool = True
) -> torch.Tensor:
    """Resample a (1, H*W, D) table from one grid to another: bicubic, antialiased, in float32 (as timm).

    antialias=False gives the plain bicubic resize of the official T2T-ViT code (it only differs when shrinking).
    """
    if tuple(old_grid) == tuple(new_grid):
        return table
    dtype = table.dtype
    t = table.float().reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2)
    t = F.interpolate(t, size=new_grid, mode="bicubic", antialias=antialias, align_corners=False)
    return t.permute(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], -1).to(dtype)


def resample_table(
    table: torch.Tensor,
    num_prefix: int,
    new_grid: tuple[int, int],
    old_grid: tuple[int, int] | None = None,
    antialias: bool = True,
) -> torch.Tensor:
    """A (1, num_prefix + H*W, D) table with its patch rows resampled to `new_grid` and its prefix rows kept.

    `old_grid` defaults to the square grid of the patch rows (a checkpoint's table at another image size); a count
    that is not a square is an error naming the fix.
    """
    if old_grid is None:
        old_grid = _table_grid(table.shape[1] - num_prefix, new_grid, "position table")
    if tuple(old_grid) == tuple(new_grid):  # no slice / cat: in a training step they cost as much as the add itself
        return table
    prefix, patches = table[:, :num_prefix], table[:, num_prefix:]
    return torch.cat([prefix, resample_grid(patches, old_grid, new_grid, antialias=antialias)], dim=1)


@register("none")
class PosEmbed(nn.Module):
    """No position information (the paper's 'none'); the base class of every kind."""

    kind: str = "none"  # the registered name, set by @register

    def __init__(self, dim: int, grid: tuple[int, int], num_prefix: int = 1, num_heads: int = 1) -> None:
        super().__init__()
        self.dim, self.grid, self.num_prefix, self.num_heads = dim, tuple(grid), num_prefix, num_heads

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x

    def attn_bias(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """An additive attention bias (1 x heads x N x N) for the tokens of `grid`, or None."""
        return None

    def qk_hook(self, grid: tuple[int, int]) -> QKHook | None:
        """A function (q, k) -> (q, k) applied in every block before the attention product, or None."""
        return None

    def table(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """The absolute table added to the tokens for `grid`, or None (no absolute table): its last H*W rows (D wide)
        are the patch positions in raster order, after the prefix rows when the kind has them."""
        return None

    def offset_table(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """A relative bias over 2-D offsets, (heads, 2H-1, 2W-1), or None (no relative bias)."""
        return None

    def resize(self, grid: tuple[int, int]) -> None:
        self.grid = tuple(grid)

    def stored_grid(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        """The patch grid a state dict of this kind (keys relative to this module) was saved at; kinds that store
        nothing grid-shaped fit any grid."""
        return self.grid

    def extra_repr(self) -> str:
        return f"grid={self.grid}, num_prefix={self.num_prefix}"


def _table_grid(n: int, grid: tuple[int, int], what: str) -> tuple[int, int]:
    """The grid of a table with n patch entries: `grid` when it fits, else the square grid of that size."""
    if n == grid[0] * grid[1]:
        return tuple(grid)
    side = math.isqrt(n)
    if side * side != n:
        raise ConfigError(
            f"cannot resample a {what} of {n} patch positions: it is not the model's {grid[0]}x{grid[1]} grid nor a "
            "square one; build the model at the checkpoint's image size"
        )
    return side, side


@register("learned_1d")
class LearnedPosEmbed1d(PosEmbed):
    """The paper's default: one learned vector per position, (num_prefix + H*W) x D."""

    def __init__(self, dim: int, grid: tuple[int, int], num_prefix: int = 1, num_heads: int = 1) -> None:
        super().__init__(dim, grid, num_prefix, num_heads)
        self.pos_embed = nn.Parameter(torch.zeros(1, num_prefix + grid[0] * grid[1], dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        return resample_table(self.pos_embed, self.num_prefix, grid, self.grid)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x + self.table(grid)

    def resize(self, grid: tuple[int, int]) -> None:
        self.pos_embed = nn.Parameter(self.table(grid).detach())
        super().resize(grid)

    def stored_grid(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        return _table_grid(state["pos_embed"].shape[1] - self.num_prefix, self.grid, "position table")


@register("learned_2d")
class LearnedPosEmbed2d(PosEmbed):
    """The paper's 2-D embedding: learned X and Y tables of D/2 each; a patch gets concat(X[col], Y[row])."""

    def __init__(self, dim: int, grid: tuple[int, int], num_prefix: int = 1, num_heads: int = 1) -> None:
        if dim % 2:
            raise ConfigError(f"pos_embed 'learned_2d' needs an even embed_dim, got {dim}; use an even width")
        super().__init__(dim, grid, num_prefix, num_heads)
        self.pos_embed_x = nn.Parameter(torch.zeros(grid[1], dim // 2))
        self.pos_embed_y = nn.Parameter(torch.zeros(grid[0], dim // 2))
        self.pos_embed_prefix = nn.Parameter(torch.zeros(1, num_prefix, dim)) if num_prefix else None
        for p in self.parameters():
            nn.init.trunc_normal_(p, std=0.02)

    @staticmethod
    def _resample_axis(t: torch.Tensor, n: int) -> torch.Tensor:
        if t.shape[0] == n:
            return t
        out = F.interpolate(t.float().t()[None], size=n, mode="linear", align_corners=False)
        return out[0].t().to(t.dtype)

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        x = self._resample_axis(self.pos_embed_x, grid[1])
        y = self._resample_axis(self.pos_embed_y, grid[0])
        patches = torch.cat([x[None, :, :].expand(grid[0], -1, -1), y[:, None, :].expand(-1, grid[1], -1)], dim=-1)
        patches = patches.reshape(1, grid[0] * grid[1], self.dim)
        if self.pos_embed_prefix is None:
            return patches
        return torch.cat([self.pos_embed_prefix, patches], dim=1)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x + self.table(grid)

    def resize(self, grid: tuple[int, int]) -> None:
        self.pos_embed_x = nn.Parameter(self._resample_axis(self.pos_embed_x.detach(), grid[1]))
        self.pos_embed_y = nn.Parameter(self._resample_axis(self.pos_embed_y.detach(), grid[0]))
        super().resize(grid)

    def stored_grid(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        return state["pos_embed_y"].shape[0], state["pos_embed_x"].shape[0]


def sincos_2d_table(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos table (H*W, D) as in MoCo v3 / big_vision: [sin x, cos x, sin y, cos y]."""
    y, x = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float32) / max(quarter - 1, 1))
    x = x.flatten()[:, None].float() * omega[None]
    y = y.flatten()[:, None].float() * omega[None]
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


@register("sincos_2d")
class SinCosPosEmbed2d(PosEmbed):
    """Fixed 2-D sin-cos embedding; prefix tokens get none. Nothing is stored, so any grid works as is."""

    def __init__(self, dim: int, grid: tuple[int, int], num_prefix: int = 1, num_heads: int = 1) -> None:
        if dim % 4:
            raise ConfigError(
                f"pos_embed 'sincos_2d' needs embed_dim divisible by 4, got {dim}; "
                f"use a width such as {dim // 4 * 4 or 4} or another pos_embed"
            )
        super().__init__(dim, grid, num_prefix, num_heads)
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        grid = tuple(grid)
        if grid not in self._cache:
            self._cache[grid] = sincos_2d_table(grid, self.dim)
        return self._cache[grid]

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        t = self.table(grid).to(device=x.device, dtype=x.dtype)
        return torch.cat([x[:, : self.num_prefix], x[:, self.num_prefix :] + t], dim=1)


@register("relative")
class RelativePosBias(PosEmbed):
    """Learned per-head bias over 2-D relative offsets, added to the attention logits.

    The table has (2H-1)(2W-1) entries, plus three for class->patch, patch->class and class->class when a class token
    is present (BEiT layout). The bias enters `scaled_dot_product_attention` as an additive mask (fused path kept).
    """

    def __init__(self, dim: int, grid: tuple[int, int], num_prefix: int = 1, num_heads: int = 1) -> None:
        if num_prefix > 1:
            raise ConfigError(f"pos_embed 'relative' supports at most one prefix token, got {num_prefix}")
        super().__init__(dim, grid, num_prefix, num_heads)
        n_rel = (2 * grid[0] - 1) * (2 * grid[1] - 1)
        self.relative_bias_table = nn.Parameter(torch.zeros(n_rel + 3 * num_prefix, num_heads))
        nn.init.trunc_normal_(self.relative_bias_table, std=0.02)

    def offset_table(self, grid: tuple[int, int]) -> torch.Tensor:
        """The offset part of the table as (heads, 2H-1, 2W-1), resampled to `grid` if needed; entry
        [h, dy + H-1, dx + W-1] is head h's bias for a query at (row, col) attending to the key at (row-dy, col-dx)."""
        h, w = 2 * self.grid[0] - 1, 2 * self.grid[1] - 1
        t = self.relative_bias_table[: h * w].t().reshape(self.num_heads, h, w)
        new = (2 * grid[0] - 1, 2 * grid[1] - 1)
        if new != (h, w):
            t = F.interpolate(t.float()[None], size=new, mode="bicubic", align_corners=False)[0].to(t.dtype)
        return t

    def attn_bias(self, grid: tuple[int, int]) -> torch.Tensor:
        gh, gw = grid
        t = self.offset_table(grid)  # heads, 2gh-1, 2gw-1
        coords = torch.stack(
            torch.meshgrid(torch.arange(gh, device=t.device), torch.arange(gw, device=t.device), indexing="ij")
        ).flatten(1)
        rel = coords[:, :, None] - coords[:, None, :]  # 2, N, N
        bias = t[:, rel[0] + gh - 1, rel[1] + gw - 1]  # heads, N, N
        if self.num_prefix:
            extra = self.relative_bias_table[-3:]  # class->patch, patch->class, class->class
            n = gh * gw
            top = extra[0][:, None, None].expand(-1, 1, n)
            left = extra[1][:, None, None].expand(-1, n + 1, 1).clone()
            left[:, 0, 0] = extra[2]
            bias = torch.cat([top, bias], dim=1)
            bias = torch.cat([left, bias], dim=2)
        return bias[None]

    def resize(self, grid: tuple[int, int]) -> None:
        t = self.offset_table(grid).detach().reshape(self.num_heads, -1).t()
        extra = self.relative_bias_table[(2 * self.grid[0] - 1) * (2 * self.grid[1] - 1) :].detach()
        self.relative_bias_table = nn.Parameter(torch.cat([t, extra], dim=0))
        super().resize(grid)

    def stored_grid(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        n = state["relative_bias_table"].shape[0] - 3 * self.num_prefix  # (2H-1)(2W-1) offsets
        if n == (2 * self.grid[0] - 1) * (2 * self.grid[1] - 1):
            return self.grid
        side = math.isqrt(n)
        if side * side != n or side % 2 == 0:
            raise ConfigError(
                f"cannot resample a relative bias table of {n} offsets: it is not the model's "
                f"{self.grid[0]}x{self.grid[1]} grid nor a square one; build the model at the checkpoint's image size"
            )
        return (side + 1) // 2, (side + 1) // 2


def sinusoid_1d_table(n_positions: int, dim: int) -> torch.Tensor:
    """Vaswani et al.'s fixed table (1, n, D): sin on even dims, cos on odd, angle pos / 10000^(2*(j//2)/D).

    Computed in float64 and rounded once to float32, like the official T2T-ViT code (numpy float64 -> FloatTensor).
    """
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]
    j = torch.arange(dim)
    angle = pos / torch.pow(10000.0, (2 * (j // 2)).to(torch.float64) / dim)[None]
    table = torch.where(j % 2 == 0, angle.sin(), angle.cos())
    return table.float()[None]


@register("sincos_1d")
class SinCosPosEmbed1d(PosEmbed):
    """T2T-ViT's fixed 1-D sinusoid table over the flattened sequence [prefix; H*W patches in raster order].

    Stored as a frozen parameter `pos_embed` (1, num_prefix + H*W, D): a checkpoint carries the table its network was
    trained with, and parameter counts equal the official code's. A new grid is handled by 2-D bicubic interpolation
    of the patch rows (prefix rows kept), as the official code does between 224 and 384 px, rather than by
    regenerating the table: a fresh table at another width would move every patch below the first row to a different
    code (its raster index r * W + c changes with W), while interpolation keeps each code tied to the same place.
    """

    def __init__(self, dim: int, grid: tuple[int, int], num_prefix: int = 1, num_heads: int = 1) -> None:
        super().__init__(dim, grid, num_prefix, num_heads)
        table = sinusoid_1d_table(num_prefix + grid[0] * grid[1], dim)
        self.pos_embed = nn.Parameter(table, requires_grad=False)

    def table(self, grid: tuple[int, int]) -> torch.Tensor:
        return resample_table(self.pos_embed, self.num_prefix, grid, self.grid, antialias=False)

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return x + self.table(grid)

    def resize(self, grid: tuple[int, int]) -> None:
        self.pos_embed = nn.Parameter(self.table(grid).detach(), requires_grad=False)
        super().resize(grid)

    def stored_grid(self, state: dict[str, torch.Tensor]) -> tuple[int, int]:
        return _table_grid(state["pos_embed"].shape[1] - self.num_prefix, self.grid, "position table")


def rope_2d_freqs(head_dim: int, theta: float = 100.0) -> torch.Tensor:
    """The head_dim / 4 frequencies theta ** (-i / (head_dim / 4)) of axial 2-D RoPE (RoPE-Axial of Heo et al.,
    "Rotary Position Embedding for Vision Transformer", ECCV 2024; theta 100 as there)."""
    quarter = head_dim // 4
    return theta ** (-torch.arange(quarter, dtype=torch.float32) / quarter)


def rope_2d_angles(grid: tuple[int, int], freqs: torch.Tensor) -> torch.Tensor:
    """Rotation angles (H*W, 2 * len(freqs)) on freqs' device: the first half of the rotated pairs turns with the
    patch's column, the second half with its row."""
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], device=freqs.device), torch.arange(grid[1], device=freqs.device), indexing="ij"
    )
    x = cols.flatten()[:, None].float() * freqs[None]
    y = rows.flatten()[:, None].float() * freqs[None]
    return torch.cat([x, y], dim=1)


def apply_rotary(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_prefix: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate the grid tokens of q and k (B x heads x N x head_dim) by the angles whose cos / sin are given
    (H*W x head_dim / 2), pairing channel i with channel i + head_dim / 2 ("rotate half"); prefix tokens (the class
    token) carry no position and are left as they are."""

    c, s = cos.to(q.dtype), sin.to(q.dtype)  # once for q and k (one dtype: both come from the same qkv projection)

    def rotate(t: torch.Tensor) -> torch.Tensor:
        a, b = t[:, :, num_prefix:].chunk(2, dim=-1)
        rotated = torch.cat([a * c - b * s, a * s + b * c], dim=-1)
        return torch.cat([t[:, :, :num_prefix], rotated], dim=2) if num_prefix else rotated

    return rotate(q), rotate(k)


@register("rope_2d")
class RotaryPosEmbed2d(PosEmbed):
    """2-D rotary position embedding on the queries and keys of every block (axial RoPE, as in recent ViTs: EVA-02,
    RoPE-ViT). Nothing is added to the tokens and nothing is stored, so any grid works as is; the attention logit of
    two patches depends on their offset only. Needs head_dim divisible by 4 (x and y halves of rotated pairs)."""

    def __init__(self, dim: int, grid: tuple[int, int], num_prefix: int = 1, num_heads: int = 1) -> None:
        head_dim = dim // num_heads
        if head_dim % 4:
            raise ConfigError(
                f"pos_embed 'rope_2d' needs a head width (embed_dim / num_heads = {dim} / {num_heads}) divisible by 4, "
                f"got {head_dim}; change embed_dim or num_heads, or use another pos_embed"
            )
        super().__init__(dim, grid, num_prefix, num_heads)
        self.head_dim = head_dim
        # not saved (a function of head_dim), a buffer so that it follows the module to its device
        self.register_buffer("freqs", rope_2d_freqs(head_dim), persistent=False)

    def qk_hook(self, grid: tuple[int, int]) -> QKHook:
        angles = rope_2d_angles(grid, self.freqs)
        return partial(apply_rotary, cos=angles.cos(), sin=angles.sin(), num_prefix=self.num_prefix)


# The one list of kinds, in registration order; `PosEmbedKind` types the `pos_embed` options (the choices in --help).
POS_EMBED_KINDS: tuple[str, ...] = tuple(_KINDS)
PosEmbedKind = Literal[POS_EMBED_KINDS]  # type: ignore[valid-type]


def build_pos_embed(kind: str, dim: int, grid: tuple[int, int], num_prefix: int, num_heads: int) -> PosEmbed:
    if kind not in _KINDS:
        raise ConfigError(f"unknown pos_embed {kind!r}; choose one of {', '.join(POS_EMBED_KINDS)}")
    return _KINDS[kind](dim, tuple(grid), num_prefix, num_heads)


def resample_state_dict(
    pos_embed: PosEmbed, state_dict: dict[str, torch.Tensor], prefix: str = "pos_embed."
) -> dict[str, torch.Tensor]:
    """`state_dict` with its `prefix` entries, saved by the same kind at another grid, resampled to `pos_embed`'s grid.

    The one place where weights change resolution: the entries are loaded into a copy of the kind built at the grid
    they were saved at, which then `resize`s itself (learned tables in 2-D, the relative bias table over offsets;
    fixed sin-cos tables store nothing and are regenerated). Entries of another kind (other keys) are returned
    as they are, for the caller's strict key check to report.
    """
    state = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    if set(state) != set(pos_embed.state_dict()) or not state:
        return state_dict
    old = tuple(pos_embed.stored_grid(state))
    if old == tuple(pos_embed.grid):
        return state_dict
    source = type(pos_embed)(pos_embed.dim, old, pos_embed.num_prefix, pos_embed.num_heads)
    try:
        source.load_state_dict(state)
    except RuntimeError as err:  # a width or head count that differs: the shapes say which
        raise ConfigError(
            f"the checkpoint's position embedding does not fit this model's {type(pos_embed).__name__} "
            f"(dim {pos_embed.dim}, {pos_embed.num_heads} heads): {str(err).splitlines()[-1].strip()}"
        ) from err
    source.resize(pos_embed.grid)
    out = {k: v for k, v in state_dict.items() if not k.startswith(prefix)}
    out.update({prefix + k: v.detach() for k, v in source.state_dict().items()})
    return out


__all__ = [
    "POS_EMBED_KINDS",
    "PosEmbed",
    "PosEmbedKind",
    "register",
    "resample_table",
    "build_pos_embed",
    "resample_grid",
    "resample_state_dict",
    "apply_rotary",
    "rope_2d_angles",
    "rope_2d_freqs",
    "sincos_2d_table",
    "sinusoid_1d_table",
]
