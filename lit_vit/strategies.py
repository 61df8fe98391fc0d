"""Strategies for models too large for one GPU: FSDP sharded along lit_vit's transformer blocks."""

from typing import Literal

from lightning.pytorch.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

from lit_vit.models.layers import Block

# The repeated unit of every lit_vit transformer (ViT, HybridViT, T2T-ViT's backbone, ViLT): FSDP shards each one as
# its own unit, so only one block's full parameters are materialised at a time.
TRANSFORMER_BLOCKS: tuple[type[nn.Module], ...] = (Block,)


def block_wrap_policy() -> ModuleWrapPolicy:
    """FSDP auto-wrap policy: one FSDP unit per transformer block (the rest, e.g. embeddings and head, in the root)."""
    return ModuleWrapPolicy(set(TRANSFORMER_BLOCKS))


class TransformerFSDP(FSDPStrategy):
    """Lightning's FSDPStrategy with one FSDP unit per transformer block of lit_vit's models.

    Use it as `--trainer.strategy lit_vit.strategies.TransformerFSDP` (see experiments/imagenet/vit_l16_fsdp.yaml).
    Checkpoints are written as one full state dict (state_dict_type full), so last.ckpt / best.ckpt stay single files
    that load anywhere, with or without FSDP.

    Args:
        activation_checkpointing: recompute each block's activations in the backward pass (less memory, ~30% more
            compute).
        sharding_strategy: FULL_SHARD (parameters, gradients and optimiser state sharded), SHARD_GRAD_OP (parameters
            kept whole between forward and backward), NO_SHARD (DDP-like) or HYBRID_SHARD (full sharding within a
            node, replication across nodes).
        cpu_offload: keep parameters on the CPU between uses (slow; for models that do not fit otherwise).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        sharding_strategy: Literal["FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD"] = "FULL_SHARD",
        cpu_offload: bool = False,
    ) -> None:
        super().__init__(
            auto_wrap_policy=block_wrap_policy(),
            activation_checkpointing_policy=block_wrap_policy() if activation_checkpointing else None,
            sharding_strategy=sharding_strategy,
            cpu_offload=cpu_offload,
            state_dict_type="full",
        )
