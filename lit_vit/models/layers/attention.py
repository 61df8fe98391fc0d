from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lit_vit.models.layers.drop_path import DropPath
from lit_vit.models.layers.mlp import Mlp

# A position embedding that acts on queries and keys (e.g. rotary): (q, k) of B x heads x N x head_dim -> new (q, k).
QKHook = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Attention(nn.Module):
    """Multi-head self-attention through the fused `scaled_dot_product_attention`.

    `attn_bias` (broadcastable to B x heads x N x N) is added to the logits: relative position biases and padding
    masks stay on the fused path. `qk_hook` transforms queries and keys before the product (rotary embeddings).
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = qk_scale if qk_scale is not None else self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor, qk_hook: QKHook | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if qk_hook is not None:
            q, k = qk_hook(q, k)
        return q, k, v

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None, qk_hook: QKHook | None = None
    ) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self._qkv(x, qk_hook)
        if attn_bias is not None:
            attn_bias = attn_bias.to(q.dtype)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, N, C)))

    def attention_probs(
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None, qk_hook: QKHook | None = None
    ) -> torch.Tensor:
        """softmax(q k^T * scale + attn_bias), B x heads x N x N, computed explicitly for analysis (attention
        distance, rollout); training and inference keep the fused kernel in `forward`."""
        q, k, _ = self._qkv(x, qk_hook)
        logits = (q @ k.transpose(-2, -1)) * self.scale
        if attn_bias is not None:
            logits = logits + attn_bias.to(logits.dtype)
        return logits.softmax(dim=-1)


class Block(nn.Module):
    """Pre-LN transformer block: x + MSA(LN(x)), then x + MLP(LN(x)) (ViT paper, eqs. 2-3).

    Everything after the width is keyword-only: the rates are all floats, and two swapped positionally would pass
    silently.
    """

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(
            dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop
        )
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(
        self, x: torch.Tensor, attn_bias: torch.Tensor | None = None, qk_hook: QKHook | None = None
    ) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), attn_bias, qk_hook))
        return x + self.drop_path(self.mlp(self.norm2(x)))


def build_blocks(dim: int, depth: int, *, drop_path_rate: float = 0.0, **block_options: Any) -> nn.ModuleList:
    """`depth` pre-LN blocks (`block_options`: Block's keyword options) with stochastic depth rising linearly from 0
    to `drop_path_rate` (as torch.linspace, the rule of timm, DeiT and the official T2T-ViT and ViLT code)."""
    rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
    return nn.ModuleList(Block(dim, drop_path=rate, **block_options) for rate in rates)
