"""`ablation.workers`: several sweep processes on this machine, each claiming runs one at a time.

Each worker trains runs with its share of the machine (its own GPUs, or cpu_count / workers torch threads) and its
output in `<sweep dir>/logs/worker<i>.log`. On Linux without GPUs a worker is a fork of the sweep's process, made after
the config is parsed and checked, so it starts training at once (a new Python process pays `import lightning` and the
config parse again, ~10 s on a 2-core CPU); otherwise (GPUs: CUDA must not be set up before a fork; macOS / Windows:
fork is unsafe there or missing; or LIT_VIT_WORKER_START=subprocess) it is `python -m lit_vit sweep --config <sweep
dir>/sweep.yaml --ablation.workers 1`. The process the user started waits for them and shows their runs' progress from
the run folders (lit_vit.ablation.progress).
SIGTERM is passed on to the workers (each saves its run's last.ckpt; the sweep exits 143); Ctrl-C reaches them with the
terminal's process group, or is passed on as SIGTERM when only this process got it (the sweep exits 130).
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_vit.ablation.plan import SWEEP_CONFIG
from lit_vit.callbacks.progress import WORKER_ENV
from lit_vit.errors import ConfigError
from lit_vit.processes import ForkedProcess, fork_blocker, fork_guarded

START_ENV = "LIT_VIT_WORKER_START"  # fork | subprocess: how workers start (default: fork where it is safe)


@dataclass
class Worker:
    index: int
    process: subprocess.Popen | ForkedProcess
    log: Path

    def last_error(self) -> str:
        """The last line of the worker's log that reads like an error (or its last line)."""
        try:
            lines = [line.strip() for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except FileNotFoundError:
            return f"no log at {self.log}"
        errors = [line for line in lines if "Error" in line or line.startswith("error:")]
        return (errors or lines or ["(empty log)"])[-1][:300]


def worker_slices(workers: int, num_threads: int | None) -> list[dict[str, str]]:
    """Environment of each worker: its own GPUs when there are any (e.g. 8 GPUs, 4 workers -> 2 each), on CPU its
    share of the cores as torch threads."""
    import torch

    gpus = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = [g for g in gpus.split(",") if g] if gpus else [str(i) for i in range(torch.cuda.device_count())]
    envs = []
    for i in range(workers):
        env = {}
        if visible:
            per = max(1, len(visible) // workers)
            mine = visible[i * per : (i + 1) * per] or [visible[i % len(visible)]]
            env["CUDA_VISIBLE_DEVICES"] = ",".join(mine)
        threads = num_threads or max(1, (os.cpu_count() or 1) // workers)
        env["OMP_NUM_THREADS"] = str(threads)
        env["LIT_VIT_WORKER_THREADS"] = str(threads)
        envs.append(env)
    return envs


def workers_fork(envs: list[dict[str, str]]) -> bool:
    """Workers may be forks of this process: where a fork is safe (lit_vit.processes), no worker has its own GPUs
    (CUDA_VISIBLE_DEVICES is read once per process), and not turned off with LIT_VIT_WORKER_START=subprocess. An
    explicit LIT_VIT_WORKER_START=fork where workers cannot fork is an error, not a quiet switch."""
    if worker_start() == "subprocess":
        return False
    blocker = "the workers have their own GPUs" if any("CUDA_VISIBLE_DEVICES" in env for env in envs) else None
    blocker = blocker or fork_blocker()
    if blocker and os.environ.get(START_ENV) == "fork":
        raise ConfigError(
            f"{START_ENV}=fork: the workers cannot be forks here ({blocker}); unset it (workers then start as new "
            "processes) or set it to subprocess"
        )
    return blocker is None


def worker_start() -> str:
    """How workers start, from LIT_VIT_WORKER_START: fork (the default; where it is safe) or subprocess."""
    wanted = os.environ.get(START_ENV, "fork")
    if wanted not in ("fork", "subprocess"):
        raise ConfigError(
            f"{START_ENV}={wanted!r}: choose fork (the default, where it is safe) or subprocess (a new Python process "
            "per worker), or unset it"
        )
    return wanted


def start_workers(
    sweep_dir: Path,
    workers: int,
    num_threads: int | None,
    work: Callable[[int], None] | None = None,
    count: int | None = None,
) -> list[Worker]:
    """Start the workers; `work(threads)` is what a forked worker runs (the training of the sweep's runs, under this
    process's parsed config, with the worker's torch threads); without it, or where a fork is not safe, each worker
    is a new `python -m lit_vit sweep`. With `count` (the runs left to train) only the first `count` of the `workers`
    start, each with the share of the machine it has among all `workers` (a run's numbers depend on its thread
    count)."""
    logs = sweep_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    envs = worker_slices(workers, num_threads)[: count or workers]
    fork = work is not None and workers_fork(envs)
    started = []
    for i, env in enumerate(envs):
        threads = env.pop("LIT_VIT_WORKER_THREADS")
        log = logs / f"worker{i}.log"
        env[WORKER_ENV] = str(i)
        if fork:
            proc = fork_guarded(partial(work, int(threads)), env, log)
        else:
            argv = [
                sys.executable,
                "-m",
                "lit_vit",
                "sweep",
                f"--config={sweep_dir / SWEEP_CONFIG}",
                "--ablation.workers=1",
                f"--num_threads={threads}",
            ]
            with open(log, "w") as out:  # the child keeps its own handle
                proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env})
        started.append(Worker(i, proc, log))
        shown = {k: v for k, v in env.items() if k != WORKER_ENV}
        print(f"worker {i}: pid {proc.pid} ({'fork' if fork else 'new process'}), {shown}, log {log}", file=sys.stderr)
    return started


def wait_for_workers(workers: list[Worker]) -> list[Worker]:
    """Wait until every worker has ended; returns those that failed. SIGTERM is passed on and raised here as
    SIGTERMException once they are gone; Ctrl-C likewise as KeyboardInterrupt."""

    def stop() -> None:
        for w in workers:
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)

    def on_sigterm(signum, frame) -> None:
        stop()
        raise SIGTERMException()

    previous = signal.signal(signal.SIGTERM, on_sigterm), signal.getsignal(signal.SIGINT)
    try:
        while any(w.process.poll() is None for w in workers):
            time.sleep(0.2)
    except (KeyboardInterrupt, SIGTERMException):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the wait for the saves short
        time.sleep(1.0)  # a terminal's Ctrl-C reached the workers too: let them stop on their own first
        stop()
        for w in workers:
            w.process.wait()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
    return [w for w in workers if w.process.returncode != 0]
