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


# --- the drawings (also used for the side-by-side sweep plots) ------------------------------------------------------
def similarity_mosaic(sim: np.ndarray) -> np.ndarray:
    """Tile (H, W, H, W) similarities into one image: one small HxW map per patch, separated by blank lines."""
    h, w = sim.shape[:2]
    mosaic = np.full((h * (h + 1) - 1, w * (w + 1) - 1), np.nan)
    for r in range(h):
        for c in range(w):
            mosaic[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = sim[r, c]
    return mosaic


def draw_similarity(ax, sim: np.ndarray, title: str = ""):
    image = ax.imshow(similarity_mosaic(sim), cmap="viridis", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or "position embedding similarity", fontsize=9)
    return image


def draw_relative_bias(ax, bias: np.ndarray, title: str = "", vmax: float | None = None):
    """One head's (2H-1, 2W-1) bias map over key offsets, centred on the query (+), red = attended more."""
    h, w = bias.shape
    gh, gw = (h + 1) // 2, (w + 1) // 2
    vmax = vmax or float(np.abs(bias).max()) or 1.0
    extent = (-gw + 0.5, gw - 0.5, gh - 0.5, -gh + 0.5)
    image = ax.imshow(bias, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest", extent=extent)
    ax.plot(0, 0, marker="+", color="black", markersize=8)
    ax.set_xticks(sorted({-(gw - 1), 0, gw - 1}))
    ax.set_yticks(sorted({-(gh - 1), 0, gh - 1}))
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)
    return image


def draw_distance(ax, distance: np.ndarray, title: str = "", max_distance: float | None = None) -> None:
    depth, heads = distance.shape
    for h in range(heads):
        ax.scatter(np.arange(1, depth + 1), distance[:, h], s=14, alpha=0.8)
    ax.set_xlabel("network depth (layer)", fontsize=8)
    ax.set_ylabel("mean attention distance (px)", fontsize=8)
    ax.set_xticks(np.arange(1, depth + 1))
    if max_distance is not None:
        ax.set_ylim(0, max_distance)
    ax.set_title(title or "mean attention distance per head", fontsize=9)


def show_image(ax, image: np.ndarray) -> None:
    """A CHW normalised image, min-max scaled for display."""
    img = np.transpose(image, (1, 2, 0))
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_rollout(ax, image: np.ndarray, rollout: np.ndarray) -> None:
    show_image(ax, image)
    h, w = image.shape[-2:]
    ax.imshow(rollout, cmap="jet", alpha=0.5, extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")


def _save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def save_similarity_png(sim: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    image = draw_similarity(ax, sim)
    fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")
    ax.set_xlabel("input patch column", fontsize=8)
    ax.set_ylabel("input patch row", fontsize=8)
    _save_figure(fig, path)


def draw_relative_bias_heads(axes, bias: np.ndarray, vmax: float, label: str = ""):
    """One head per axis of the row `axes` (extra axes hidden); returns the last image, for a colour bar."""
    image = None
    for i, ax in enumerate(axes):
        if i < len(bias):
            image = draw_relative_bias(ax, bias[i], f"{label}head {i}", vmax)
        else:
            ax.axis("off")
    axes[0].set_ylabel("key row - query row", fontsize=7)
    return image


def save_relative_bias_png(bias: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bias), figsize=(2.2 * len(bias) + 1, 2.6), squeeze=False)
    image = draw_relative_bias_heads(axes[0], bias, float(np.abs(bias).max()) or 1.0)
    for ax in axes[0]:
        ax.set_xlabel("key col - query col", fontsize=7)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, label="attention logit bias")
    _save_figure(fig, path)


def save_distance_png(distance: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    draw_distance(ax, distance)
    _save_figure(fig, path)


def save_rollout_png(images: np.ndarray, rollout: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        show_image(axes[0, i], images[i])
        draw_rollout(axes[1, i], images[i], rollout[i])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("rollout", fontsize=8)
    _save_figure(fig, path)


# --- the callbacks --------------------------------------------------------------------------------------------------
class ViTArtifacts(Callback):
    """Writes the position-embedding similarity (or the relative bias maps), mean attention distance and attention
    rollout of the trained backbone to `<run dir>/artifacts/` (.npz numbers + .png) when fit ends.

    Works with any backbone that has `pos_embed` (a PosEmbed: its `table` / `offset_table`), `grid`, `patch_embed`,
    `num_prefix_tokens` and `attention_maps(x)` (VisionTransformer); missing parts are skipped with a warning.

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
        patch = tuple(backbone.patch_embed.patch_size)
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
