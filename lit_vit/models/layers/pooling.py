from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from lit_vit.errors import ConfigError
from lit_vit.models.layers.mlp import Mlp

POOL_KINDS = ("cls", "gap", "map")
PoolKind = Literal[POOL_KINDS]  # type: ignore[valid-type] - the choices of the `pool` options in --help


def check_pool(pool: str, class_token: bool) -> None:
    if pool not in POOL_KINDS:
        raise ConfigError(f"unknown pool {pool!r}; choose one of {', '.join(POOL_KINDS)}")
    if pool == "cls" and not class_token:
        raise ConfigError(
            "pool 'cls' needs the class token, but class_token is false; set class_token: true or pool: gap"
        )


class MAPHead(nn.Module):
    """Multihead attention pooling (big_vision MAPHead): a learned query attends over the patch tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.latent, std=dim**-0.5)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, 1, h, C // h).transpose(1, 2)
        k, v = self.kv(x).reshape(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
        out = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, C))
        out = out + self.mlp(self.norm(out))
        return out[:, 0]
