"""Commands run in a fork of this process: no new interpreter, no second `import lightning` (~10 s on a 2-core CPU).

Used where this process has imported and checked everything a child needs and has not set up CUDA: a CPU sweep's
workers (lit_vit.ablation.workers) and gpu_check's CPU mode (lit_vit.bench.gpu_check). A child runs its command
through lit_vit.cli.run_guarded, writes its output to a log file and exits with the status `python -m lit_vit` would
give; the parent sees it through the part of subprocess.Popen's interface it needs.
"""

import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


class ForkedProcess:
    """A forked worker seen through the part of subprocess.Popen's interface the sweep uses."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None

    def _reap(self, flags: int) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, flags)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N for a signal, as Popen has it
        return self.returncode

    def poll(self) -> int | None:
        return self._reap(os.WNOHANG)

    def wait(self, timeout: float | None = None) -> int:
        """The exit status; after `timeout` seconds subprocess.TimeoutExpired, as Popen.wait raises it."""
        if timeout is None:
            return self._reap(0)
        end = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > end:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout)
            time.sleep(0.1)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


def exit_status(code: object) -> int:
    """The process exit status of a SystemExit code, as Python gives it: None 0, an int itself, anything else 1."""
    return 0 if code is None else code if isinstance(code, int) else 1


@contextmanager
def torch_single_threaded() -> Iterator[None]:
    """torch on one thread inside (its setting restored after): for the work of a process that forks later. Once
    OpenMP (libgomp, in torch's Linux wheels) has run a region on several threads, a fork hangs at its first
    multi-threaded op; setting the count starts no thread, running a large op does (e.g. the init of a wide layer)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fork_is_safe() -> bool:
    """A fork may stand in for a new interpreter: Linux (fork is the platform's own start method there) and CUDA not
    set up in this process (a CUDA context does not survive a fork). The caller also keeps torch single-threaded
    until it forks (torch_single_threaded)."""
    return fork_blocker() is None


def fork_blocker() -> str | None:
    """Why this process must not fork a command (None when it may): see fork_is_safe."""
    import torch

    if sys.platform != "linux":
        return f"fork is not safe on {sys.platform}"
    if torch.cuda.is_initialized():
        return "CUDA is set up in this process"
    return None


def fork_guarded(work: Callable[[], None], env: dict[str, str], log: Path) -> ForkedProcess:
    """Fork a child that runs `work` with `env` in os.environ, its output in `log`, and exits as `python -m lit_vit`
    would (lit_vit.cli.run_guarded): it never returns into the caller's code."""
    sys.stdout.flush()
    sys.stderr.flush()  # nothing buffered here may be written twice
    pid = os.fork()
    if pid:
        return ForkedProcess(pid)
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        os.environ.update(env)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from lit_vit.cli import run_guarded

        run_guarded(work)
        code = 0
    except SystemExit as err:
        if isinstance(err.code, str):
            print(err.code, file=sys.stderr)
        code = exit_status(err.code)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)  # not the parent's atexit handlers, not back into its stack
