"""Few-shot linear evaluation of a frozen representation, the ViT paper's ablation metric (Tables 5 and 8, Figure 9).

The paper's method (section 4.1, "few-shot accuracies"): a regularised least-squares regression from the frozen
pre-logit features of k training images per class to {-1, 1}^K targets, solved in closed form, scored by top-1 on
held-out images. Here:

- features are `backbone.forward_head(backbone.forward_features(x), pre_logits=True)` in eval mode, without
  augmentation (the DataModule's evaluation transform on its train split);
- for every draw, each class's train images are shuffled once and the first k taken, so the k-shot sets of one draw
  are nested; the accuracy of each k is the mean over `draws` draws;
- features are centred on the k-shot set's mean (an unpenalised intercept, as sklearn's RidgeClassifier) and the L2
  strength is a multiple of their mean squared norm (so one grid fits any feature scale);
- the L2 strength is chosen per fit by exact leave-one-out squared error on the k-shot set itself (closed form from
  one SVD), never by looking at the evaluation split.
"""

from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Subset

from lit_vit.callbacks.ema import averaged_module
from lit_vit.data.protocols import FewShotData, require
from lit_vit.errors import ConfigError

# L2 strengths as multiples of the mean squared norm of the centred k-shot features: 1e-6 ... 1e2, half decades
DEFAULT_L2_GRID = tuple(10.0 ** (e / 2) for e in range(-12, 5))


def ridge_fit(x: torch.Tensor, y: torch.Tensor, l2s: Sequence[float]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Ridge regression with an unpenalised intercept for several L2 strengths at once, in float64.

    Solves min_{W,b} ||Y - X W - 1 b||^2 + l2 ||W||^2 for every l2 from one thin SVD of the centred X.
    Returns the weights [(D+1, T) per l2, the last row being the intercept] and the exact leave-one-out mean squared
    error per l2 (len(l2s),): e_i / (1 - h_ii) with the hat matrix H = 11^T / n + Xc (Xc^T Xc + l2 I)^-1 Xc^T.
    """
    x, y = x.double(), y.double()
    n = x.shape[0]
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    u, s, vh = torch.linalg.svd(xc, full_matrices=False)
    uty = u.t() @ yc
    weights, loo = [], []
    for l2 in l2s:
        shrink = s**2 / (s**2 + l2)  # the hat matrix's eigenvalues
        w = vh.t() @ ((s / (s**2 + l2))[:, None] * uty)
        b = y_mean - x_mean @ w
        weights.append(torch.cat([w, b[None]], dim=0))
        fitted = u @ (shrink[:, None] * uty)
        leverage = 1.0 / n + (u**2) @ shrink
        residual = (yc - fitted) / (1.0 - leverage).clamp_min(1e-12)[:, None]
        loo.append(residual.pow(2).mean())
    return weights, torch.stack(loo)


def ridge_predict(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Scores (N, T) of a `ridge_fit` solution on features x (N, D)."""
    return x.double() @ weights[:-1] + weights[-1]


def fewshot_accuracy(
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
) -> tuple[float, float]:
    """Top-1 of the least-squares classifier fitted on (train_x, train_y) to {-1, 1}^K targets, on (test_x, test_y).

    The L2 strength is l2_grid[i] * mean squared norm of the centred training features, i chosen by leave-one-out
    error on the training features. Returns (accuracy, the L2 multiple chosen).
    """
    targets = 2.0 * torch.nn.functional.one_hot(train_y.long(), num_classes).double() - 1.0
    xc = train_x.double() - train_x.double().mean(0)
    scale = xc.pow(2).sum(1).mean().clamp_min(1e-12)
    weights, loo = ridge_fit(train_x, targets, [a * float(scale) for a in l2_grid])
    best = int(torch.argmin(loo))
    pred = ridge_predict(weights[best], test_x).argmax(1)
    return float((pred.cpu() == test_y.cpu()).double().mean()), float(l2_grid[best])


def draw_kshot(targets: torch.Tensor, num_classes: int, k_max: int, generator: torch.Generator) -> torch.Tensor:
    """(num_classes, k_max) train indices: each class's indices in a random order, the first k_max kept; column
    slices [:, :k] are the nested k-shot sets of this draw."""
    counts = torch.bincount(targets.long(), minlength=num_classes)
    if counts.min() < k_max:
        c = int(counts.argmin())
        raise ConfigError(
            f"few-shot evaluation needs {k_max} train images of every class but class {c} has {int(counts[c])} in the "
            f"train split; lower FewShotEval shots to at most {int(counts[c])}"
        )
    rows = []
    for c in range(num_classes):
        idx = torch.nonzero(targets == c).flatten()
        rows.append(idx[torch.randperm(len(idx), generator=generator)[:k_max]])
    return torch.stack(rows)


@torch.no_grad()
def extract_features(backbone: torch.nn.Module, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """Pre-logit features (N, D) of every image of `loader`, in float32 on the CPU."""
    feats = []
    for x, _ in loader:
        out = backbone.forward_features(x.to(device))
        feats.append(backbone.forward_head(out, pre_logits=True).float().cpu())
    return torch.cat(feats)


class FewShotEval(Callback):
    """Few-shot linear accuracy of the frozen pre-logit features (the ViT paper's ablation metric), logged as
    `fewshot/<k>shot` (a fraction, like val/acc1) to the run's loggers at the end of fit and every `every_n_epochs`.

    The k-shot sets come from the DataModule's train split read with its evaluation transform (no augmentation); the
    score is top-1 on its validation split; with an EMA callback, of the averaged weights. Under multi-process
    training rank 0 computes and logs on its own (the backbone's own forward, outside the DDP wrapper, so no
    collective runs) while the other ranks wait at a barrier.

    Args:
        shots: the k values (images per class); each needs that many train images of every class.
        draws: random draws of the k-shot sets per k, averaged.
        every_n_epochs: also evaluate after every n-th training epoch (None: only at the end of fit).
        max_eval_images: score on at most this many validation images (the first ones; None: all).
        seed: seed of the k-shot draws (the same images for every run and epoch).
    """

    def __init__(
        self,
        shots: list[int] = [1, 5, 10, 25],  # noqa: B006 - LightningCLI shows the default; never mutated
        draws: int = 5,
        every_n_epochs: int | None = None,
        max_eval_images: int | None = None,
        seed: int = 0,
    ) -> None:
        if not shots or any(not isinstance(k, int) or k < 1 for k in shots):
            raise ConfigError(f"FewShotEval shots must be positive integers, got {shots}; e.g. shots: [1, 5, 10, 25]")
        for name, value in (("draws", draws), ("every_n_epochs", every_n_epochs), ("max_eval_images", max_eval_images)):
            if value is not None and value < 1:
                raise ConfigError(f"FewShotEval {name} must be a positive integer, got {value}")
        if draws is None:
            raise ConfigError("FewShotEval draws must be a positive integer, got None; e.g. draws: 5")
        self.shots, self.draws, self.seed = sorted(set(shots)), draws, seed
        self.every_n_epochs, self.max_eval_images = every_n_epochs, max_eval_images
        self._last_step: int | None = None
        self.results: dict[int, float] = {}

    @staticmethod
    def _check_datamodule(dm) -> None:
        require(dm, FewShotData, "FewShotEval")

    def check(self, datamodule: L.LightningDataModule) -> None:
        """Refuses options the data cannot serve (another kind of DataModule, more shots than some class has train
        images) before any training: an ablation sweep calls it for every variant before its first run starts."""
        self._check_datamodule(datamodule)
        train = datamodule.build_split("train", datamodule.transforms(train=False))
        draw_kshot(torch.as_tensor(train.targets), datamodule.num_classes, self.shots[-1], torch.Generator())

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage == "fit":
            self._check_datamodule(dm)
        backbone = pl_module.backbone
        if not (hasattr(backbone, "forward_features") and hasattr(backbone, "forward_head")):
            raise ConfigError(
                f"FewShotEval needs forward_features / forward_head(pre_logits=True); {type(backbone).__name__} "
                "has not; remove the FewShotEval callback"
            )
        train = getattr(dm, "datasets", {}).get("train")
        if stage == "fit" and train is not None:  # too few images of some class: refused now, not after training
            draw_kshot(torch.as_tensor(train.targets), dm.num_classes, self.shots[-1], torch.Generator())

    def _loader(self, dataset, trainer: L.Trainer) -> DataLoader:
        dm = trainer.datamodule
        return DataLoader(dataset, batch_size=dm.eval_batch_size, shuffle=False, num_workers=dm.num_workers)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[int, float]:
        """The few-shot accuracies {k: mean top-1 over draws} of the module's backbone as it is now."""
        dm = trainer.datamodule
        train = dm.build_split("train", dm.transforms(train=False))
        val = dm.datasets.get("val") or dm.build_split("val", dm.transforms(train=False))
        val_y = torch.as_tensor(val.targets)
        if self.max_eval_images is not None and self.max_eval_images < len(val):
            val, val_y = Subset(val, range(self.max_eval_images)), val_y[: self.max_eval_images]
        num_classes = dm.num_classes
        targets = torch.as_tensor(train.targets)
        generator = torch.Generator().manual_seed(self.seed)
        draws = torch.stack([draw_kshot(targets, num_classes, self.shots[-1], generator) for _ in range(self.draws)])
        needed = torch.unique(draws)  # features only for the images some draw uses
        row_of = torch.full((len(targets),), -1, dtype=torch.long)
        row_of[needed] = torch.arange(len(needed))
        backbone, device = averaged_module(trainer, pl_module).backbone, pl_module.device  # EMA weights if on
        was_training = backbone.training
        backbone.eval()
        try:
            train_x = extract_features(backbone, self._loader(Subset(train, needed.tolist()), trainer), device)
            val_x = extract_features(backbone, self._loader(val, trainer), device)
        finally:
            backbone.train(was_training)
        results = {}
        for k in self.shots:
            accs = []
            for draw in draws:
                idx = draw[:, :k].flatten()
                accs.append(fewshot_accuracy(train_x[row_of[idx]], targets[idx], val_x, val_y, num_classes)[0])
            results[k] = sum(accs) / len(accs)
        return results

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, epoch: int) -> None:
        if trainer.is_global_zero:
            self.results = self.evaluate(trainer, pl_module)
            metrics = {f"fewshot/{k}shot": v for k, v in self.results.items()}
            for logger in trainer.loggers:
                logger.log_metrics({**metrics, "epoch": epoch}, step=trainer.global_step)
                logger.save()
        self._last_step = trainer.global_step
        trainer.strategy.barrier("fewshot_eval")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch
        if self.every_n_epochs and (epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, epoch)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.interrupted or self._last_step == trainer.global_step:  # the last epoch's evaluation is current
            return
        self._run(trainer, pl_module, max(trainer.current_epoch - 1, 0))


__all__ = ["FewShotEval", "draw_kshot", "extract_features", "fewshot_accuracy", "ridge_fit", "ridge_predict"]
