from lit_vit.models.layers.attention import Attention, Block, QKHook, build_blocks
from lit_vit.models.layers.dims import merge_dims
from lit_vit.models.layers.drop_path import DropPath
from lit_vit.models.layers.encoder import TokenEncoder, take_indices
from lit_vit.models.layers.groups import block_layer_ids
from lit_vit.models.layers.init import init_weights, linear_head
from lit_vit.models.layers.mlp import Mlp
from lit_vit.models.layers.patch_embed import PatchEmbed, grid_size, to_2tuple
from lit_vit.models.layers.pooling import POOL_KINDS, MAPHead, PoolKind, check_pool
from lit_vit.models.layers.pos_embed import (
    POS_EMBED_KINDS,
    PosEmbed,
    PosEmbedKind,
    build_pos_embed,
    register,
    resample_grid,
    resample_state_dict,
    resample_table,
)

__all__ = [
    "POOL_KINDS",
    "POS_EMBED_KINDS",
    "Attention",
    "Block",
    "DropPath",
    "MAPHead",
    "Mlp",
    "PatchEmbed",
    "PoolKind",
    "PosEmbed",
    "PosEmbedKind",
    "QKHook",
    "TokenEncoder",
    "block_layer_ids",
    "build_blocks",
    "build_pos_embed",
    "check_pool",
    "grid_size",
    "init_weights",
    "linear_head",
    "merge_dims",
    "register",
    "resample_grid",
    "resample_state_dict",
    "resample_table",
    "take_indices",
    "to_2tuple",
]
