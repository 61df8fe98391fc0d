"""Drawing a ViT's analysis artifacts with matplotlib (imported when drawing): the position-embedding similarity grid,
relative-bias maps per head, mean attention distance against depth, attention rollout over an image.

The `draw_*` functions draw on given axes; `save_*_png` use them for one run's PNGs (`lit_vit.callbacks.artifacts`)
and `lit_vit.ablation.plots` for the variants of a sweep side by side.
"""

from pathlib import Path

import numpy as np


# --- on given axes --------------------------------------------------------------------------------------------------
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


# --- one run's PNGs -------------------------------------------------------------------------------------------------
def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return path


def save_similarity_png(sim: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    image = draw_similarity(ax, sim)
    fig.colorbar(image, ax=ax, fraction=0.046, label="cosine similarity")
    ax.set_xlabel("input patch column", fontsize=8)
    ax.set_ylabel("input patch row", fontsize=8)
    save_figure(fig, path)


def save_relative_bias_png(bias: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(bias), figsize=(2.2 * len(bias) + 1, 2.6), squeeze=False)
    image = draw_relative_bias_heads(axes[0], bias, float(np.abs(bias).max()) or 1.0)
    for ax in axes[0]:
        ax.set_xlabel("key col - query col", fontsize=7)
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, label="attention logit bias")
    save_figure(fig, path)


def save_distance_png(distance: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    draw_distance(ax, distance)
    save_figure(fig, path)


def save_rollout_png(images: np.ndarray, rollout: np.ndarray, path: Path) -> None:
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.6 * n, 3.4), squeeze=False)
    for i in range(n):
        show_image(axes[0, i], images[i])
        draw_rollout(axes[1, i], images[i], rollout[i])
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("rollout", fontsize=8)
    save_figure(fig, path)


def draw_patch_map(ax, image: np.ndarray, grid_map: np.ndarray, title: str = "") -> None:
    """A (rows, cols) patch map over a CHW image (each patch one cell), scaled to its own range (min to max)."""
    show_image(ax, image)
    h, w = image.shape[-2:]
    scaled = (grid_map - grid_map.min()) / max(float(grid_map.max() - grid_map.min()), 1e-12)
    ax.imshow(scaled, cmap="jet", alpha=0.5, vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    ax.set_title(title, fontsize=8)


def save_alignment_png(
    image: np.ndarray, words: list[str], plan: np.ndarray, attention: np.ndarray, path: Path
) -> Path:
    """ViLT's word-patch alignment (the paper's Figure 4): per word, its optimal-transport mass over the patches (top
    row, with the word's total mass) and the last layer's attention from the word to the patches (bottom row), each
    map scaled to its own range."""
    import matplotlib.pyplot as plt

    n = len(words)
    fig, axes = plt.subplots(2, n + 1, figsize=(1.5 * (n + 1), 3.4), squeeze=False)
    show_image(axes[0, 0], image)
    fig.suptitle(" ".join(words), fontsize=9)
    axes[1, 0].axis("off")
    for i, word in enumerate(words):
        draw_patch_map(axes[0, i + 1], image, plan[i], f"{word}\n{plan[i].sum():.3f}")
        draw_patch_map(axes[1, i + 1], image, attention[i], word)
    axes[0, 1].set_ylabel("transport plan", fontsize=8)
    axes[1, 1].set_ylabel("attention (last layer)", fontsize=8)
    return save_figure(fig, path)
