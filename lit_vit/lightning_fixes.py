"""Workarounds for Lightning bugs that would make a lit_vit run hang, each applied only to the versions that have it.

SIGTERM under DDP (Lightning 2.6): `_SignalConnector._sigterm_notifier_fn`, the SIGTERM handler, calls
`dist.broadcast` from inside the signal handler on whichever rank got the signal. The other ranks are at that moment
in some other collective (the gradient all-reduce of the step), so the broadcast is unmatched and every rank waits
forever: a scheduler's SIGTERM to a multi-process run hangs it until SIGKILL, about one time in three in our 2-process
CPU tests. The training loop already broadcasts rank 0's flag at the start of every step (a matched collective,
`_TrainingEpochLoop._broadcast_sigterm_tensor`), so the handler only has to set the flag and forward the signal to
the launcher's child processes, which is what the replacement below does. Lightning has no public hook for the
handler, hence the private names; the patch is skipped when the handler no longer broadcasts.

The tested range (`TESTED_LIGHTNING`, the same as pyproject.toml's, which a test checks): lit_vit relies on a few
private Lightning names where no public API exists (this handler, the CSV writer's `_check_log_dir_exists`); a
release outside the range may rename them and, e.g., delete a resumed run's metrics.csv, so the CLI stops at its start
(`check_lightning_version`) unless told to go on.

Two messages that do not apply to a lit_vit run are dropped where they come from, each by its exact text (see
`quiet_lightning_noise`): a tip advertising a cloud logger, and a torch deprecation warning about Lightning's own code.
"""

import inspect
import logging
import os
import warnings

import lightning
from lightning.pytorch.trainer.connectors import signal_connector
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from lit_vit.errors import ConfigError

log = logging.getLogger(__name__)


def _sigterm_notifier_without_collective(self, signum, _frame) -> None:
    log.info(rank_prefixed_message(f"Received SIGTERM: {signum}", self.trainer.local_rank))
    if not self.received_sigterm:
        launcher = self.trainer.strategy.launcher
        if launcher is not None:
            launcher.kill(signum)
    self.received_sigterm = True  # the training loop shares it with every rank at the start of the next step


def apply() -> bool:
    """Patch the SIGTERM handler when the installed Lightning broadcasts inside it; returns whether it patched."""
    # private: Lightning has no public hook for its SIGTERM handler (see the module docstring)
    connector = signal_connector._SignalConnector
    source = inspect.getsource(connector._sigterm_notifier_fn)
    if "dist.broadcast" not in source:
        return False
    connector._sigterm_notifier_fn = _sigterm_notifier_without_collective
    return True


PATCHED = apply()


class _DropCloudLoggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(CLOUD_LOGGER_TIP)


# Lightning 2.6 logs this tip at INFO level for every Trainer whose loggers include no LitLogger (logger_connector.
# configure_logger), with no option to turn it off; lit_vit's runs log to metrics.csv by design.
CLOUD_LOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking"
# torch (2.14 here) deprecates constructing LeafSpec, which Lightning 2.6's own lightning/pytorch/utilities/_pytree.py
# does at every fit (its _tree_flatten); nothing in a lit_vit config can avoid it. Matched on its exact text and module.
PYTREE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


def quiet_lightning_noise() -> None:
    """Drop the two messages above, and nothing else (idempotent)."""
    rank_zero_log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropCloudLoggerTip) for f in rank_zero_log.filters):
        rank_zero_log.addFilter(_DropCloudLoggerTip())
    warnings.filterwarnings(
        "ignore", message=PYTREE_WARNING, category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree"
    )


quiet_lightning_noise()


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
