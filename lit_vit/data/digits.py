"""The embedded default data: scikit-learn's bundled 8x8 digits and lit_vit's fixed split of them (numpy only, so
scripts such as benchmarks/imagefolder_vs_timm.py read them without importing Lightning)."""

import numpy as np

SPLIT_SIZES = {"train": 1257, "val": 270, "test": 270}


def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The fixed split (seeded with 0, stratified per class) as (N, 8, 8, 1) uint8 images and int64 targets:
    1,259 train / 269 val / 269 test (SPLIT_SIZES gives the proportions, rounded per class)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    targets = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)
    parts: dict[str, list[int]] = {k: [] for k in SPLIT_SIZES}
    for c in range(10):  # stratified: each split gets the class proportions of the whole set
        idx = rng.permutation(np.flatnonzero(targets == c))
        n_val = round(len(idx) * SPLIT_SIZES["val"] / len(targets))
        n_test = round(len(idx) * SPLIT_SIZES["test"] / len(targets))
        parts["val"] += idx[:n_val].tolist()
        parts["test"] += idx[n_val : n_val + n_test].tolist()
        parts["train"] += idx[n_val + n_test :].tolist()
    return {k: (images[np.sort(v)], targets[np.sort(v)]) for k, v in parts.items()}
