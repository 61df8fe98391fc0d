"""Workarounds for Lightning bugs that would make a lit_vit run hang, each applied only to the versions that have it.

SIGTERM under DDP (Lightning 2.6): `_SignalConnector._sigterm_notifier_fn`, the SIGTERM handler, calls
`dist.broadcast` from inside the signal handler on whichever rank got the signal. The other ranks are at that moment
in some other collective (the gradient all-reduce of the step), so the broadcast is unmatched and every rank waits
forever: a scheduler's SIGTERM to a multi-process run hangs it until SIGKILL, about one time in three in our 2-process
CPU tests. The training loop already broadcasts rank 0's flag at the start of every step (a matched collective,
`_TrainingEpochLoop._broadcast_sigterm_tensor`), so the handler only has to set the flag and forward the signal to
the launcher's child processes, which is what the replacement below does. Lightning has no public hook for the
handler, hence the private names; the patch is skipped when the handler no longer broadcasts.
"""

import inspect
import logging

from lightning.pytorch.trainer.connectors import signal_connector
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message

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
    connector = signal_connector._SignalConnector
    source = inspect.getsource(connector._sigterm_notifier_fn)
    if "dist.broadcast" not in source:
        return False
    connector._sigterm_notifier_fn = _sigterm_notifier_without_collective
    return True


PATCHED = apply()
