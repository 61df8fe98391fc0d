"""Every private Lightning / jsonargparse / torchmetrics name lit_vit uses, each behind a small function or constant
that says why no public API does the job and which release it was checked with. Nowhere else in lit_vit touches a
private name of those packages (tests/test_privates.py checks it); a new release that renames one breaks here only.

Checked with lightning 2.6.6, torchmetrics 1.9.0, jsonargparse 4.53.0 (pyproject.toml bounds each of them: a test
checks that the pinned releases of .ci/constraints.txt are inside the bounds). lit_vit uses no private jsonargparse
name; its error texts are matched by lit_vit/cli_parser.py's regexes (turned into one-line errors), hence its bound.
Public but undocumented names (the loop progress counter) are wrapped here too.

Workarounds for Lightning bugs that would make a lit_vit run hang are applied by `patch_lightning()` (the CLI calls
it; a user who builds a Trainer of their own calls `lit_vit.patch_lightning()` once), never at import:

SIGTERM under DDP (Lightning 2.6): `_SignalConnector._sigterm_notifier_fn`, the SIGTERM handler, calls
`dist.broadcast` from inside the signal handler on whichever rank got the signal. The other ranks are at that moment
in some other collective (the gradient all-reduce of the step), so the broadcast is unmatched and every rank waits
forever: a scheduler's SIGTERM to a multi-process run hangs it until SIGKILL, about one time in three in our 2-process
CPU tests. The training loop already broadcasts rank 0's flag at the start of every step (a matched collective,
`_TrainingEpochLoop._broadcast_sigterm_tensor`), so the handler only has to set the flag and forward the signal to
the launcher's child processes, which is what the replacement below does. Lightning has no public hook for the
handler, hence the private names; the patch is skipped when the handler no longer broadcasts.

The tested range (`TESTED_LIGHTNING`, the same as pyproject.toml's, which a test checks): a release outside the range
may rename the names below and, e.g., break the SIGTERM fix, so the CLI stops at its start (`check_lightning_version`)
unless told to go on.

Two messages that do not apply to a lit_vit run are dropped where they come from, each by its exact text (see
`quiet_lightning_noise`): a tip advertising a cloud logger, and a torch deprecation warning about Lightning's own code.
"""

import functools
import inspect
import logging
import operator
import os
import typing
import warnings
from typing import Any

import lightning
from lightning.pytorch.core.mixins import hparams_mixin
from lightning.pytorch.trainer.connectors import signal_connector
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from lit_vit.errors import ConfigError

log = logging.getLogger(__name__)


# -- the SIGTERM deadlock (lightning 2.6.6) ----------------------------------------------------------------------------
def _sigterm_notifier_without_collective(self, signum, _frame) -> None:
    log.info(rank_prefixed_message(f"Received SIGTERM: {signum}", self.trainer.local_rank))
    if not self.received_sigterm:
        launcher = self.trainer.strategy.launcher
        if launcher is not None:
            launcher.kill(signum)
    self.received_sigterm = True  # the training loop shares it with every rank at the start of the next step


def patch_sigterm_handler() -> bool:
    """Patch the SIGTERM handler when the installed Lightning broadcasts inside it; returns whether it is patched."""
    # private: Lightning has no public hook for its SIGTERM handler (see the module docstring); checked with 2.6.6
    connector = signal_connector._SignalConnector
    if connector._sigterm_notifier_fn is _sigterm_notifier_without_collective:
        return True
    if "dist.broadcast" not in inspect.getsource(connector._sigterm_notifier_fn):
        return False
    connector._sigterm_notifier_fn = _sigterm_notifier_without_collective
    return True


def int_before_float(func: Any) -> list[str]:
    """Rewrite `func`'s annotations that are unions of int and float with float first as `int | float | ...`; returns
    the parameters rewritten.

    Python's typing caches `Union[...]` by equality, which ignores order: when `Optional[Union[float, int]]` was
    created first (importing rich before Lightning does it), Lightning's `Optional[Union[int, float]]` annotations
    *are* that object, and jsonargparse, trying float first, reads `limit_val_batches: 1` (one batch) as 1.0 (all of
    them) and `limit_train_batches: 2` as 2.0. PEP 604 unions are not cached, so `int | float` keeps its order."""
    fixed = []
    for name, annotation in list(getattr(func, "__annotations__", {}).items()):
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Union and int in args and float in args:
            if args.index(float) < args.index(int):
                ordered = [int, float, *(a for a in args if a not in (int, float))]
                func.__annotations__[name] = functools.reduce(operator.or_, ordered)
                fixed.append(name)
    return fixed


def patch_lightning() -> bool:
    """Apply lit_vit's Lightning workarounds (idempotent): the DDP SIGTERM deadlock fix, the two dropped messages and
    int-before-float order in the Trainer's int-or-float options (int_before_float). The CLI calls it; call it once
    before `Trainer.fit` when you build a Trainer yourself. Returns whether the SIGTERM handler is patched (False: the
    installed Lightning does not need it)."""
    quiet_lightning_noise()
    int_before_float(lightning.pytorch.Trainer.__init__)
    return patch_sigterm_handler()


def request_stop(trainer: Any) -> None:
    """Ask a fit to stop at the next step boundary as if it got SIGTERM (the loop shares rank 0's flag with every
    rank and raises SIGTERMException there)."""
    # private: Trainer.received_sigterm has no setter and Lightning has no public "stop at the next step" that also
    # ends the fit with SIGTERMException (trainer.should_stop waits for the epoch's end); checked with 2.6.6
    trainer._signal_connector.received_sigterm = True


# -- messages that do not apply to lit_vit runs ------------------------------------------------------------------------
class _DropCloudLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CLOUD_LOGGER_TIP)


# Lightning 2.6 logs this tip at INFO level for every Trainer whose loggers include no LitLogger (logger_connector.
# configure_logger), with no option to turn it off; lit_vit's runs log to metrics.csv by design. Checked with 2.6.6.
CLOUD_LOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
# torch (2.14 here) deprecates constructing LeafSpec, which Lightning 2.6's own lightning/pytorch/utilities/_pytree.py
# does at every fit (its _tree_flatten); nothing in a lit_vit config can avoid it. Matched on its exact text and module
# (a private module name of Lightning 2.6.6: a warning filter can only name the module that warns).
PYTREE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def quiet_lightning_noise() -> None:
    """Drop the two messages above, and nothing else (idempotent)."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropCloudLoggerTip) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropCloudLoggerTip())
    warnings.filterwarnings(
        "ignore", message=PYTREE_WARNING, category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree"
    )


# -- LightningModule hyper-parameters (lightning 2.6.6) ----------------------------------------------------------------
# LightningCLI saves a module's class_path under these keys of its hparams (Lightning's `_given_hyperparameters`
# context): the resume check compares them with the command's model config. No public name for either.
CLASS_PATH_KEY = "_class_path"
INSTANTIATOR_KEY = "_instantiator"


def built_by_cli() -> bool:
    """Whether the LightningModule being constructed now is instantiated by LightningCLI (or load_from_checkpoint of
    a CLI-made checkpoint), which then saves its sub-module's class_path / init_args as hyper-parameters."""
    # private: Lightning tells a module's save_hyperparameters about its CLI config only through this ContextVar;
    # checked with 2.6.6
    return bool(hparams_mixin._given_hyperparameters.get())


def attached_trainer(module: Any) -> Any:
    """The Trainer `module` is attached to, or None (e.g. in load_from_checkpoint): the public `module.trainer`, which
    raises a RuntimeError when there is none."""
    try:
        return module.trainer
    except RuntimeError:
        return None


# -- the position inside an epoch (lightning 2.6.6) --------------------------------------------------------------------
def batches_trained_this_epoch(trainer: Any) -> int:
    """Batches whose training step ran in the current epoch. Lightning has no public API for the position inside the
    epoch; its loop progress counter (public attributes, undocumented) is the only source. `processed` (not
    `completed`, which lags by one while the on_train_batch_end hooks run, where periodic checkpoints are saved)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


# -- torchmetrics (1.9.0) ----------------------------------------------------------------------------------------------
def set_update_count(metric: Any, count: int) -> None:
    """Restore a metric's update count with its states (an unfinished epoch's sums after a resume)."""
    # private: torchmetrics keeps the update count only in `_update_count` (no setter) and caches compute() in
    # `_computed`, which must be dropped when the states change; checked with 1.9.0
    metric._update_count = count
    metric._computed = None


# -- WeightAveraging (lightning 2.6.6) ---------------------------------------------------------------------------------
# private: WeightAveraging keeps the averaged model, its options and the last updated step only in private attributes
# (`_average_model`, `_device`, `_use_buffers`, `_kwargs`, `_latest_update_step`; no public accessor in Lightning
# 2.6.6): lit_vit's EMA builds the average in on_fit_start and brings it up to date before a checkpoint with these.
def averaged_model(callback: Any) -> Any:
    """A WeightAveraging callback's AveragedModel, or None before it is built."""
    return getattr(callback, "_average_model", None)


def build_average_model(callback: Any, pl_module: Any) -> None:
    """Build `callback`'s AveragedModel of `pl_module` with the callback's own options (what its setup would do)."""
    from torch.optim.swa_utils import AveragedModel

    callback._average_model = AveragedModel(
        model=pl_module,
        device=callback._device or pl_module.device,
        use_buffers=callback._use_buffers,
        **callback._kwargs,
    )


def update_average_now(callback: Any, trainer: Any) -> None:
    """Make the update of the optimiser step just taken when the callback has not made it yet."""
    if (
        callback._average_model is not None
        and trainer.training
        and trainer.global_step > callback._latest_update_step
        and callback.should_update(step_idx=trainer.global_step - 1)
    ):
        callback._average_model.update_parameters(trainer.lightning_module)
        callback._latest_update_step = trainer.global_step


# -- the tested Lightning range ----------------------------------------------------------------------------------------
# The lightning releases lit_vit is tested with: pyproject.toml's dependency specifier (tests/test_lightning_bounds.py
# checks that they are the same and that the installed release is in the range).
TESTED_LIGHTNING = ">=2.6.6,<2.7"
# set to 1 to run with a lightning release outside TESTED_LIGHTNING anyway
UNTESTED_LIGHTNING_ENV = "LIT_VIT_UNTESTED_LIGHTNING"


def check_lightning_version(version: str | None = None) -> None:
    """Stop with a ConfigError when lightning `version` (default: the installed one) is outside TESTED_LIGHTNING,
    unless the environment sets LIT_VIT_UNTESTED_LIGHTNING=1."""
    version = lightning.__version__ if version is None else version
    try:
        tested = Version(version) in SpecifierSet(TESTED_LIGHTNING, prereleases=True)
    except InvalidVersion:
        tested = False
    if not tested and os.environ.get(UNTESTED_LIGHTNING_ENV) != "1":
        raise ConfigError(
            f"lightning {version} is installed, but lit_vit is tested with lightning{TESTED_LIGHTNING} and relies on "
            f"some of its private internals: pip install 'lightning{TESTED_LIGHTNING}' (or set "
            f"{UNTESTED_LIGHTNING_ENV}=1 to run with {version} anyway)"
        )
