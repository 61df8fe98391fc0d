"""DeiT-style per-image augmentation on top of the crop and flip: RandAugment / TrivialAugmentWide / AutoAugment,
colour jitter and random erasing, from torchvision.transforms.v2.

albumentations 2.0 (the last MIT-licensed release) has no RandAugment, so one training pipeline uses two
libraries: albumentations does the geometry (crop, resize, flip) on the HWC uint8 array as before, torchvision.v2
then does the policy and the colour ops on the CHW uint8 tensor, converts to float, normalises, and erases last
(erasing fills with values of the normalised image). Both halves are seeded from the sample's seed
(`set_random_seed`, called by the dataset with the sampler's per-sample seed), so an image's augmentation is a
function of (data seed, epoch, index) whatever the worker, as for the plain albumentations pipelines.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torchvision.transforms import v2

from lit_vit.data.transforms import train_transform
from lit_vit.errors import ConfigError
from lit_vit.options import options_from

if TYPE_CHECKING:  # albumentations is imported by lit_vit.data.transforms, which keeps it off the network
    import albumentations as A

AUTO_AUGMENT_KINDS = ("randaugment", "trivialaugment", "autoaugment")
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")
ERASING_MODES = ("pixel", "const")
# RandAugment's magnitude on timm's scale (DeiT's rand-m9: 9 of 10, 10 = the op's largest change), mapped onto
# torchvision's magnitude bins: 101 bins make magnitude m bin round(10 * m), a 0.1 resolution for the noise.
MAX_MAGNITUDE, MAGNITUDE_BINS = 10.0, 101


@dataclass
class AugmentPolicy:
    """Per-image training augmentation after the crop and flip (torchvision.transforms.v2); validation is untouched.

    DeiT / the official T2T-ViT recipe: auto_augment randaugment, num_ops 2, magnitude 9, magnitude_std 0.5,
    erasing_prob 0.25, erasing_mode pixel, color_jitter null (timm skips jitter when a policy is on).

    Args:
        auto_augment: randaugment, trivialaugment (TrivialAugmentWide), autoaugment, or null (none).
        num_ops: RandAugment: ops applied per image.
        magnitude: RandAugment: strength on timm's 0..10 scale (rand-m9 = 9; 10 = each op's largest change).
        magnitude_std: RandAugment: std of the normal noise on the magnitude, drawn per image (timm's mstd; 0: fixed).
        autoaugment_policy: AutoAugment's learned policy: imagenet, cifar10 or svhn.
        color_jitter: brightness / contrast / saturation jitter strength (e.g. 0.4), or null (none).
        erasing_prob: probability of random erasing per image (0: off).
        erasing_mode: pixel (per-pixel normal noise, timm's 'pixel') or const (zeros, i.e. the mean colour).
    """

    auto_augment: str | None = "randaugment"
    num_ops: int = 2
    magnitude: float = 9.0
    magnitude_std: float = 0.5
    autoaugment_policy: str = "imagenet"
    color_jitter: float | None = None
    erasing_prob: float = 0.0
    erasing_mode: str = "pixel"

    def __post_init__(self) -> None:
        def bad(name: str, value, allowed: str) -> ConfigError:
            return ConfigError(
                f"augment_policy.{name} is {value!r} but must be {allowed}; "
                f"set --data.init_args.augment_policy.{name} accordingly"
            )

        if self.auto_augment not in (None, *AUTO_AUGMENT_KINDS):
            raise bad("auto_augment", self.auto_augment, f"one of {', '.join(AUTO_AUGMENT_KINDS)} or null")
        if not (isinstance(self.num_ops, int) and self.num_ops >= 1):
            raise bad("num_ops", self.num_ops, "an integer >= 1 (DeiT: 2)")
        if not 0 <= self.magnitude <= MAX_MAGNITUDE:
            raise bad("magnitude", self.magnitude, f"in [0, {MAX_MAGNITUDE:g}] (timm's scale; DeiT: 9)")
        if not self.magnitude_std >= 0:
            raise bad("magnitude_std", self.magnitude_std, ">= 0 (DeiT: 0.5; 0 = fixed magnitude)")
        if self.autoaugment_policy not in AUTOAUGMENT_POLICIES:
            raise bad("autoaugment_policy", self.autoaugment_policy, f"one of {', '.join(AUTOAUGMENT_POLICIES)}")
        if self.color_jitter is not None and not 0 < self.color_jitter <= 1:
            raise bad("color_jitter", self.color_jitter, "in (0, 1] (e.g. 0.4) or null for none")
        if not 0 <= self.erasing_prob <= 1:
            raise bad("erasing_prob", self.erasing_prob, "a probability in [0, 1] (DeiT: 0.25)")
        if self.erasing_mode not in ERASING_MODES:
            raise bad("erasing_mode", self.erasing_mode, f"one of {', '.join(ERASING_MODES)}")

    @property
    def active(self) -> bool:
        return self.auto_augment is not None or self.color_jitter is not None or self.erasing_prob > 0


def as_policy(value: "AugmentPolicy | dict | None") -> AugmentPolicy | None:
    """The policy from a dataclass or its dict (hyperparameters read back from a checkpoint or a YAML)."""
    return options_from(AugmentPolicy, value, "augment_policy")


class NoisyRandAugment(v2.RandAugment):
    """torchvision's RandAugment with a magnitude on timm's 0..10 scale and timm's magnitude noise (mstd), drawn once
    per image (timm draws it per op) from the torch RNG that the pipeline seeds."""

    def __init__(self, num_ops: int, magnitude: float, magnitude_std: float, fill: list[int]) -> None:
        super().__init__(num_ops=num_ops, num_magnitude_bins=MAGNITUDE_BINS, interpolation="bilinear", fill=fill)
        self.mean_magnitude, self.magnitude_std = magnitude, magnitude_std
        self.magnitude = self._bin(magnitude)

    @staticmethod
    def _bin(magnitude: float) -> int:
        return int(round(min(max(magnitude, 0.0), MAX_MAGNITUDE) / MAX_MAGNITUDE * (MAGNITUDE_BINS - 1)))

    def forward(self, *inputs):
        if self.magnitude_std > 0:
            self.magnitude = self._bin(self.mean_magnitude + self.magnitude_std * float(torch.randn(())))
        return super().forward(*inputs)


def policy_ops(policy: AugmentPolicy, mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[list, list]:
    """(uint8 ops, float ops): the policy / jitter on the uint8 image, then normalisation and erasing."""
    fill = [int(round(255 * m)) for m in mean]  # geometric ops fill with the mean colour, as timm does
    uint8_ops: list = []
    if policy.auto_augment == "randaugment":
        uint8_ops.append(NoisyRandAugment(policy.num_ops, policy.magnitude, policy.magnitude_std, fill))
    elif policy.auto_augment == "trivialaugment":
        uint8_ops.append(v2.TrivialAugmentWide(interpolation="bilinear", fill=fill))
    elif policy.auto_augment == "autoaugment":
        uint8_ops.append(v2.AutoAugment(v2.AutoAugmentPolicy(policy.autoaugment_policy), "bilinear", fill))
    if policy.color_jitter is not None:
        cj = policy.color_jitter
        uint8_ops.append(v2.ColorJitter(brightness=cj, contrast=cj, saturation=cj))
    float_ops: list = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    if policy.erasing_prob > 0:
        value = "random" if policy.erasing_mode == "pixel" else 0.0
        float_ops.append(v2.RandomErasing(p=policy.erasing_prob, value=value))
    return uint8_ops, float_ops


class PolicyPipeline:
    """albumentations geometry (HWC uint8 -> HWC uint8), then torchvision.v2 policy, normalisation and erasing.

    Called like an albumentations Compose (`pipeline(image=array)["image"]`, `set_random_seed(seed)`), so the
    datasets and the per-sample seeding treat both kinds of pipeline alike. The torchvision ops draw from the global
    torch RNG; they run inside `torch.random.fork_rng` seeded from this pipeline's own generator, so they neither
    depend on nor disturb the RNG of the process.
    """

    def __init__(
        self, geometry: "A.Compose", policy: AugmentPolicy, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        uint8_ops, float_ops = policy_ops(policy, mean, std)
        self.geometry, self.policy = geometry, policy
        self.torch_ops = v2.Compose([*uint8_ops, *float_ops])
        self.set_random_seed(0)

    def set_random_seed(self, seed: int) -> None:
        self.geometry.set_random_seed(seed)
        self._rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray) -> dict[str, torch.Tensor]:
        array = self.geometry(image=image)["image"]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(self._rng.integers(2**63 - 1)))  # CPU only: no CUDA lazy seeding
            out = self.torch_ops(tensor)
        return {"image": out}

    def __repr__(self) -> str:
        return f"PolicyPipeline(geometry={self.geometry!r}, torch_ops={self.torch_ops!r})"


def build_train_transform(
    img_size: tuple[int, int],
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: str,
    hflip: bool,
    rrc_scale: tuple[float, float],
    pad: int,
    policy: AugmentPolicy | None,
) -> "A.Compose | PolicyPipeline":
    """The training pipeline: albumentations alone (crop, flip, normalise), or followed by the policy's ops."""
    if policy is None or not policy.active:
        return train_transform(img_size, mean, std, augment, hflip, rrc_scale, pad)
    geometry = train_transform(img_size, mean, std, augment, hflip, rrc_scale, pad, normalize=False)
    return PolicyPipeline(geometry, policy, mean, std)
