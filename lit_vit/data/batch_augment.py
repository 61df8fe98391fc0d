"""Batched augmentation of in-memory splits: one uint8 tensor per split, whole batches cropped, flipped and normalised
with tensor ops (on the training device when the split fits there).

The per-sample path (lit_vit.data.datasets + albumentations, one `set_random_seed` and one pad-and-crop per image in
DataLoader workers) stays for image files and for per-image policies (RandAugment, lit_vit.data.augment). For data
already in memory it costs as much as the forward and backward pass of a small ViT; here a batch is one gather:

    sampler -> (indices, batch seed) -> crop offsets / boxes and flips drawn on the CPU from a torch.Generator seeded
    by (data seed, epoch, rank, batch position) -> one gather (pad_crop, none) or one grid_sample (rrc) from the
    uint8 tensor -> float, normalised

The random draws are made on the CPU, so a batch is augmented the same way wherever the pixels live; the batch seed
depends on the batch's position in the epoch, so a run resumed mid-epoch (lit_vit.data.sampling) sees the batches an
uninterrupted run sees. The augmentations follow albumentations' (the per-sample path) in distribution: pad-and-crop
offsets uniform over the 2 * pad + 1 positions of each axis, flips with probability 1/2, RandomResizedCrop boxes by
the same 10-attempt rule with the same centre-crop fallback (resampled bicubic, as cv2's INTER_CUBIC, then rounded to
uint8 values as albumentations' uint8 output is).
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from lit_vit.errors import ConfigError

AUGMENT_ON = ("auto", "batch", "sample")
DEVICE_CACHE = ("auto", "device", "cpu")
# `device_cache: auto` keeps the splits on a CUDA device when they take at most this share of its free memory
DEVICE_SHARE = 0.25
RRC_RATIO = (3 / 4, 4 / 3)  # albumentations' and torchvision's default aspect-ratio range
RRC_ATTEMPTS = 10


class BatchAugment:
    """The training crop and flip of a whole batch (pad_crop, rrc or none, and hflip), drawn from one generator.

    `params(n, sizes, generator)` draws the augmentation of n images (its tensors are the test's handle on the
    distribution), `apply(images, idx, params)` applies it to the batch `images[idx]`.
    """

    def __init__(
        self,
        augment: str,
        img_size: tuple[int, int],
        pad: int,
        hflip: bool,
        rrc_scale: tuple[float, float],
    ) -> None:
        self.augment, self.img_size, self.pad, self.hflip = augment, img_size, pad, hflip
        self.rrc_scale = (float(rrc_scale[0]), float(rrc_scale[1]))

    def params(self, n: int, sizes: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Offsets (pad_crop) or boxes (rrc, as (top, left, height, width) in the source image) and flips of n images
        whose source sizes are `sizes` (n, 2)."""
        out: dict[str, torch.Tensor] = {}
        if self.augment == "pad_crop":
            out["offset"] = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator)
        elif self.augment == "rrc":
            out["box"] = rrc_boxes(sizes, self.rrc_scale, RRC_RATIO, generator)
        flip = torch.rand(n, generator=generator) < 0.5
        out["flip"] = flip if self.hflip else torch.zeros(n, dtype=torch.bool)
        return out

    def apply(self, images: torch.Tensor, idx: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The augmented batch as uint8 (B, C, h, w), from the stored split `images` (see `TensorSplit`)."""
        params = {k: v.to(images.device, non_blocking=True) for k, v in params.items()}
        if self.augment == "rrc":
            return resized_crops(images[idx], params["box"], params["flip"], self.img_size)
        offset = params.get("offset", torch.zeros(len(idx), 2, dtype=torch.long, device=images.device))
        return gather_crops(images, idx, offset, params["flip"], self.img_size)


def gather_crops(
    images: torch.Tensor, idx: torch.Tensor, offset: torch.Tensor, flip: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """images[idx] cropped at (top, left) = offset to `size`, each crop mirrored where `flip`: one gather."""
    h, w = size
    dev = images.device
    rows = offset[:, :1] + torch.arange(h, device=dev)  # (B, h)
    cols = torch.arange(w, device=dev).expand(len(idx), w)
    cols = torch.where(flip[:, None], (w - 1) - cols, cols) + offset[:, 1:]  # a flipped crop reads its row backwards
    chans = torch.arange(images.shape[1], device=dev)
    return images[idx[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]]


def rrc_boxes(
    sizes: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator
) -> torch.Tensor:
    """RandomResizedCrop boxes (top, left, height, width) of images of `sizes` (n, 2): albumentations' rule (10
    attempts of area in scale * image area and log-uniform aspect ratio; the first that fits wins, its position
    uniform; else the centre crop clipped to the ratio range), all attempts of all images drawn at once."""
    n = len(sizes)
    H, W = sizes[:, 0].double(), sizes[:, 1].double()
    area = (H * W)[:, None]
    target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(n, RRC_ATTEMPTS, generator=generator).double())
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(n, RRC_ATTEMPTS, generator=generator).double())
    bw, bh = torch.round(torch.sqrt(target * aspect)), torch.round(torch.sqrt(target / aspect))
    ok = (bw > 0) & (bw <= W[:, None]) & (bh > 0) & (bh <= H[:, None])
    first = ok.to(torch.uint8).argmax(dim=1)
    pick = torch.arange(n)
    h, w = bh[pick, first], bw[pick, first]
    start = torch.rand(n, 2, generator=generator).double()
    top = torch.floor((H - h + 1) * start[:, 0])
    left = torch.floor((W - w + 1) * start[:, 1])
    # the fallback: the whole image, narrowed to the nearest aspect ratio in range, centred
    in_ratio = W / H
    fw = torch.where(in_ratio > ratio[1], torch.round(H * ratio[1]), W)
    fh = torch.where(in_ratio < ratio[0], torch.round(W / ratio[0]), H)
    found = ok.any(dim=1)
    h, w = torch.where(found, h, fh), torch.where(found, w, fw)
    top = torch.where(found, top, torch.div(H - fh, 2, rounding_mode="floor"))
    left = torch.where(found, left, torch.div(W - fw, 2, rounding_mode="floor"))
    return torch.stack([top, left, h, w], dim=1).long()


def resized_crops(batch: torch.Tensor, box: torch.Tensor, flip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box (top, left, height, width) resampled bicubically to `size` (mirrored where `flip`), as uint8:
    one affine grid_sample for the batch (pixel centres mapped as cv2.resize maps them)."""
    B, _, H, W = batch.shape
    box = box.to(torch.float32)
    top, left, bh, bw = box.unbind(dim=1)
    sx = bw / W
    theta = torch.zeros(B, 2, 3, device=batch.device)
    theta[:, 0, 0] = torch.where(flip, -sx, sx)
    theta[:, 0, 2] = (2 * left + bw) / W - 1
    theta[:, 1, 1] = bh / H
    theta[:, 1, 2] = (2 * top + bh) / H - 1
    grid = F.affine_grid(theta, [B, batch.shape[1], *size], align_corners=False)
    out = F.grid_sample(batch.float(), grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


class TensorSplit(Dataset):
    """One split as a uint8 tensor (N, C, H, W), indexed by whole batches (`DataLoader(batch_size=None)` with a
    `BatchSeededSampler`): `split[(indices, seed)]` is the augmented, normalised training batch, `split[indices]` the
    normalised evaluation batch (the stored images are then already at the evaluation size).

    `sizes` (N, 2) are the source sizes of images of different sizes stored top-left on one canvas (rrc on an
    ImageFolder cache); by default every image fills the tensor.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        augment: BatchAugment | None = None,
        sizes: torch.Tensor | None = None,
    ) -> None:
        self.images = images
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long).to(images.device)
        self.augment = augment
        n, _, H, W = images.shape
        self.sizes = sizes if sizes is not None else torch.tensor([[H, W]]).expand(n, 2)
        std_t = torch.tensor(std, dtype=torch.float32, device=images.device)
        self.scale = (1.0 / (255.0 * std_t)).view(1, -1, 1, 1)
        self.shift = (-torch.tensor(mean, dtype=torch.float32, device=images.device) / std_t).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, item: torch.Tensor | tuple[torch.Tensor, int]) -> tuple[torch.Tensor, torch.Tensor]:
        idx, seed = item if isinstance(item, tuple) else (item, None)
        if self.augment is not None and seed is not None:
            params = self.augment.params(len(idx), self.sizes[idx], torch.Generator().manual_seed(seed))
            idx = idx.to(self.images.device, non_blocking=True)
            batch = self.augment.apply(self.images, idx, params)
        else:
            idx = idx.to(self.images.device, non_blocking=True)
            batch = self.images[idx]
        return batch.float().mul_(self.scale).add_(self.shift), self.targets[idx]

    @property
    def nbytes(self) -> int:
        return self.images.numel() * self.images.element_size()


def to_tensor(images: np.ndarray | Sequence[np.ndarray]) -> torch.Tensor:
    """(N, H, W, C) uint8 images (an array or a list of equal-shaped arrays) as a contiguous (N, C, H, W) tensor."""
    array = images if isinstance(images, np.ndarray) else np.stack(images)
    return torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))


def on_canvas(images: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of different sizes on one (N, C, Hmax, Wmax) canvas, each top-left, its edge pixels repeated to the
    canvas edge (so bicubic taps just outside a box read the image's border, as cv2 does), and their sizes (N, 2)."""
    sizes = np.array([im.shape[:2] for im in images])
    H, W = sizes.max(axis=0)
    canvas = np.stack([np.pad(im, ((0, H - im.shape[0]), (0, W - im.shape[1]), (0, 0)), mode="edge") for im in images])
    return to_tensor(canvas), torch.from_numpy(sizes).long()


def resolve_device(device_cache: str, root_device: torch.device, nbytes: int) -> torch.device:
    """Where the splits' tensors live: the training device when it is a GPU with room (auto), as asked otherwise."""
    if device_cache == "cpu" or root_device.type == "cpu":
        return torch.device("cpu")
    if root_device.type != "cuda":
        return root_device
    free, _ = torch.cuda.mem_get_info(root_device)
    fits = nbytes <= DEVICE_SHARE * free
    if device_cache == "device" and not fits:
        raise ConfigError(
            f"device_cache device: the in-memory splits take {nbytes / 2**20:.0f} MiB, more than "
            f"{DEVICE_SHARE:.0%} of the {free / 2**20:.0f} MiB free on {root_device}; set "
            "--data.init_args.device_cache auto or cpu"
        )
    return root_device if fits else torch.device("cpu")
