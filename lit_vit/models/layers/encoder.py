"""The block stack of a token encoder (ViT, its hybrid, T2T-ViT), its forward and position-table resize, and timm's
conveniences on it: intermediate block outputs (`forward_intermediates`) and gradient checkpointing per block
(`set_grad_checkpointing`)."""

import torch
from torch.utils.checkpoint import checkpoint

from lit_vit.models.layers.patch_embed import to_2tuple


def take_indices(depth: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """timm's `feature_take_indices`: None every block, an int n the last n, a list those blocks (negative from the
    end)."""
    if indices is None:
        indices = depth
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise ValueError(f"last-n ({indices}) is out of range (1 to {depth})")
        return list(range(depth - indices, depth))
    taken = [i if i >= 0 else depth + i for i in indices]
    if any(not 0 <= i < depth for i in taken):
        raise ValueError(f"block indices {list(indices)} out of range for depth {depth}")
    return taken


class TokenEncoder:
    """Mixin for an nn.Module with `embed(x) -> (tokens, grid)`, `pos_embed` (attention bias / q-k hook), `blocks`,
    `norm` and `num_prefix_tokens`: the block loop, once, for the forward pass, the intermediates and the attention
    maps."""

    grad_checkpointing: bool = False

    def token_grid(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """The token grid of an image size (patches, or the T2T module's soft splits)."""
        raise NotImplementedError

    def resize_pos_embed(self, img_size: int | tuple[int, int]) -> None:
        """Resample the position embedding to the token grid of a new training image size."""
        self.img_size = to_2tuple(img_size)
        self.grid = self.token_grid(self.img_size)
        self.pos_embed.resize(self.grid)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x, grid = self.embed(x)
        return self.norm(self.run_blocks(x, grid)[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass while training (less memory, ~30% more compute);
        without FSDP too (the FSDP strategy's `activation_checkpointing` wraps the same blocks)."""
        self.grad_checkpointing = enable

    def run_blocks(
        self, x: torch.Tensor, grid: tuple[int, int], take: list[int] | None = None, stop: int | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Tokens after blocks 0..stop (all when None), and the outputs of the blocks listed in `take`."""
        attn_bias, qk_hook = self.pos_embed.attn_bias(grid), self.pos_embed.qk_hook(grid)
        blocks = self.blocks if stop is None else self.blocks[: stop + 1]
        use_checkpoint = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        taken = []
        for i, block in enumerate(blocks):
            if use_checkpoint:
                x = checkpoint(block, x, attn_bias, qk_hook, use_reentrant=False)
            else:
                x = block(x, attn_bias, qk_hook)
            if take is not None and i in take:
                taken.append(x)
        return x, taken

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's `forward_intermediates`: the outputs of the blocks in `indices` (None all, n the last n, a list
        those), through the final norm when `norm`, as B x C x H x W patch maps (NCHW) or B x L x C tokens (NLC), with
        the prefix tokens (class token) split off (paired with each map when `return_prefix_tokens`); returns
        (final features, intermediates), or only the intermediates. `stop_early` runs no block after the last
        one taken (the final features are then those of that block, as in timm)."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be NCHW or NLC, got {output_fmt!r}")
        take = take_indices(len(self.blocks), indices)
        x, grid = self.embed(x)
        x, intermediates = self.run_blocks(x, grid, take, max(take) if stop_early else None)
        if norm:
            intermediates = [self.norm(y) for y in intermediates]
        n = self.num_prefix_tokens
        prefix = [y[:, :n] for y in intermediates]
        intermediates = [y[:, n:] for y in intermediates]
        if output_fmt == "NCHW":
            intermediates = [y.reshape(y.shape[0], *grid, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]
        if return_prefix_tokens and n:
            intermediates = list(zip(intermediates, prefix, strict=True))
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def attention_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block (a list of B x heads x N x N, prefix tokens first), computed
        explicitly for analysis from each block's input; `forward` keeps the fused attention kernel."""
        x, grid = self.embed(x)
        _, outputs = self.run_blocks(x, grid, take=list(range(len(self.blocks) - 1)))
        attn_bias, qk_hook = self.pos_embed.attn_bias(grid), self.pos_embed.qk_hook(grid)
        return [
            block.attn.attention_probs(block.norm1(h), attn_bias, qk_hook)
            for block, h in zip(self.blocks, [x, *outputs], strict=True)
        ]
