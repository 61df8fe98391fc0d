"""Per-run analysis artifacts of a ViT (the ViT paper's Figure 7 and attention rollout), written at the end of fit.

Each artifact is saved twice in `<run dir>/artifacts/`: the raw numbers (.npz, so plots can be redrawn and compared
across runs) and a PNG.

- pos_embed_similarity: cosine similarity between the position embedding of every patch and every other patch,
  drawn as a grid of small images (Figure 7, centre); absolute kinds only (learned_1d, learned_2d, sincos_*).
- relative_bias: the learned relative position bias of each head over 2-D offsets (key minus query), the relative
  kind's counterpart of the similarity grid; `relative` only.
- attention_distance: mean attention distance in pixels per head against depth (Figure 7, right).
- attention_rollout: Abnar & Zuidema's rollout of the attention of the read-out (class token, or all patches when
  there is none) onto the patches, on a few validation images.
"""

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn

from lit_vit.models.layers import PosEmbed
from lit_vit.plotting import save_distance_png, save_relative_bias_png, save_rollout_png, save_similarity_png

ARTIFACTS_DIR = "artifacts"


# --- the numbers ----------------------------------------------------------------------------------------------------
def pos_embed_similarity(backbone: torch.nn.Module) -> np.ndarray | None:
    """Cosine similarity (H, W, H, W) between the patch position embeddings, or None for kinds without a table."""
    pos = getattr(backbone, "pos_embed", None)
    if not isinstance(pos, PosEmbed):
        return None
    grid = tuple(backbone.grid)
    table = pos.table(grid)
    if table is None:
        return None
    table = table.detach().float().reshape(-1, pos.dim)[-grid[0] * grid[1] :]  # drop prefix rows
    table = torch.nn.functional.normalize(table, dim=-1)
    return (table @ table.t()).reshape(*grid, *grid).cpu().numpy()


def relative_bias_maps(backbone: torch.nn.Module) -> np.ndarray | None:
    """The learned relative bias as (heads, 2H-1, 2W-1) maps indexed by the key's offset from the query: entry
    [h, H-1 + dy, W-1 + dx] is what head h adds to the logit of a query attending to the patch dy rows below and dx
    columns right of it (the centre is the query itself). None for kinds without a relative bias."""
    pos = getattr(backbone, "pos_embed", None)
    table = pos.offset_table(tuple(backbone.grid)) if isinstance(pos, PosEmbed) else None
    if table is None:
        return None
    return table.detach().float().flip(-2, -1).cpu().numpy()  # query-key -> key-query


def patch_distances(grid: tuple[int, int], patch_size: tuple[int, int]) -> torch.Tensor:
    """Euclidean distance in pixels between the centres of every pair of patches, (H*W, H*W)."""
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    centres = torch.stack([rows.flatten() * patch_size[0], cols.flatten() * patch_size[1]], dim=1).float()
    return torch.cdist(centres, centres)


def mean_attention_distance(
    maps: list[torch.Tensor], grid: tuple[int, int], patch_size: tuple[int, int], num_prefix: int
) -> np.ndarray:
    """(depth, heads): pixel distance between a query patch and the patches it attends to, weighted by attention
    (renormalised over patches: attention to the class token has no distance), averaged over queries and images."""
    dist = patch_distances(grid, patch_size)
    out = []
    for attn in maps:
        patches = attn[:, :, num_prefix:, num_prefix:].float()
        patches = patches / patches.sum(-1, keepdim=True).clamp_min(1e-12)
        out.append((patches * dist.to(patches.device)).sum(-1).mean(dim=(0, 2)))
    return torch.stack(out).cpu().numpy()


def attention_rollout(maps: list[torch.Tensor], grid: tuple[int, int], num_prefix: int) -> np.ndarray:
    """(B, H, W): attention rolled out through the layers (heads averaged, identity added for the residual), read from
    the class token, or averaged over the patch queries when there is no class token."""
    rollout = None
    for attn in maps:
        a = attn.float().mean(dim=1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], device=a.device)
        a = a / a.sum(-1, keepdim=True)
        rollout = a if rollout is None else a @ rollout
    read = rollout[:, 0, num_prefix:] if num_prefix else rollout.mean(dim=1)
    read = read / read.amax(dim=-1, keepdim=True)
    return read.reshape(-1, *grid).cpu().numpy()


# --- the callbacks --------------------------------------------------------------------------------------------------
class ViTArtifacts(Callback):
    """Writes the position-embedding similarity (or the relative bias maps), mean attention distance and attention
    rollout of the trained backbone to `<run dir>/artifacts/` (.npz numbers + .png) when fit ends.

    Works with any backbone that has `pos_embed` (a PosEmbed: its `table` / `offset_table`), `grid`, `img_size`,
    `num_prefix_tokens` and `attention_maps(x)` (the token encoders: ViT, hybrid, T2T-ViT); missing parts are skipped
    with a warning.

    Args:
        num_images: validation images averaged for the mean attention distance.
        rollout_images: validation images shown with their attention rollout.
    """

    def __init__(self, num_images: int = 128, rollout_images: int = 6) -> None:
        self.num_images, self.rollout_images = num_images, rollout_images

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and not trainer.interrupted:
            write_artifacts(
                getattr(pl_module, "backbone", pl_module),
                trainer.datamodule,
                Path(trainer.default_root_dir) / ARTIFACTS_DIR,
                self.num_images,
                self.rollout_images,
            )


def _validation_images(datamodule, n: int, device: torch.device) -> torch.Tensor:
    images, count = [], 0
    for batch in datamodule.val_dataloader():
        x = batch[0] if isinstance(batch, list | tuple) else batch
        images.append(x)
        count += len(x)
        if count >= n:
            break
    return torch.cat(images)[:n].to(device)


@torch.no_grad()
def write_artifacts(backbone, datamodule, out: Path, num_images: int = 128, rollout_images: int = 6) -> list[Path]:
    """Compute and save the artifacts of `backbone` on validation images of `datamodule`; returns the files."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    was_training = backbone.training
    backbone.eval()
    try:
        sim = pos_embed_similarity(backbone)
        if sim is not None:
            np.savez(out / "pos_embed_similarity.npz", similarity=sim, grid=np.array(backbone.grid))
            save_similarity_png(sim, out / "pos_embed_similarity.png")
            written += [out / "pos_embed_similarity.npz", out / "pos_embed_similarity.png"]
        bias = relative_bias_maps(backbone)
        if bias is not None:
            np.savez(out / "relative_bias.npz", bias=bias, grid=np.array(backbone.grid))
            save_relative_bias_png(bias, out / "relative_bias.png")
            written += [out / "relative_bias.npz", out / "relative_bias.png"]
        if not hasattr(backbone, "attention_maps") or datamodule is None:
            rollout_images = 0
            rank_zero_warn(f"{type(backbone).__name__} has no attention_maps(x): attention artifacts skipped")
            return written
        device = next(backbone.parameters()).device
        x = _validation_images(datamodule, max(num_images, rollout_images), device)
        grid, prefix = tuple(backbone.grid), backbone.num_prefix_tokens
        patch = tuple(size // g for size, g in zip(backbone.img_size, grid, strict=True))  # token stride in pixels
        distance = np.mean(
            [mean_attention_distance(backbone.attention_maps(chunk), grid, patch, prefix) for chunk in x.split(64)],
            axis=0,
        )
        max_distance = float(patch_distances(grid, patch).max())
        np.savez(out / "attention_distance.npz", distance=distance, max_distance=max_distance)
        save_distance_png(distance, out / "attention_distance.png")
        few = x[:rollout_images]
        rollout = attention_rollout(backbone.attention_maps(few), grid, prefix)
        images = few.float().cpu().numpy()
        np.savez(out / "attention_rollout.npz", images=images, rollout=rollout)
        save_rollout_png(images, rollout, out / "attention_rollout.png")
        written += [out / f"attention_{name}" for name in ("distance.npz", "distance.png", "rollout.npz")]
        written.append(out / "attention_rollout.png")
    finally:
        backbone.train(was_training)
    return written
