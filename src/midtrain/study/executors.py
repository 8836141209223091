"""Executors run job chains: `local` (in process, or N worker processes), `ray` and `slurm`
(study/slurm.py).

An executor knows nothing about stages: it hands each chain to `jobs.run_chain` (in this process,
a spawned worker or a Ray task) and reports each `Outcome` as it arrives. A chain that fails is
retried once inside `run_chain`. A Ray task whose node or worker dies is rerun by Ray
(`Resources.max_retries`) on any node with the resources, and resumes from its run folder; a local
worker that dies, or a Ray task out of retries, is reported as a failure and the rest go on.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Protocol

from midtrain.errors import MidtrainError
from midtrain.jobs import Chain, Outcome, run_chain
from midtrain.study.resources import (  # noqa: F401 - read from here too
    GRACE_S,
    Notify,
    Resources,
    memory_bytes,
    slurm_minutes,
)


class Executor(Protocol):
    def run(self, chains: list[Chain], notify: Notify) -> list[Outcome]: ...


def _died(chain: Chain, why: str) -> Outcome:
    last = chain[-1]
    return Outcome(name=last.name, dir=last.dir, status="failed", error=why)


class LocalExecutor:
    """One after another in this process, or `workers` processes with cores split between them;
    each run on `processes` local ranks (train/launch.py)."""

    def __init__(self, workers: int = 1, processes: int = 1):
        self.workers, self.processes = max(1, workers), max(1, processes)

    def run(self, chains: list[Chain], notify: Notify) -> list[Outcome]:
        outcomes = []
        if self.workers == 1:
            for chain in chains:
                outcomes.append(run_chain(chain, processes=self.processes))
                notify(outcomes[-1])
            return outcomes
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        ctx = mp.get_context("spawn")
        slots = ctx.SimpleQueue()
        for gpus in gpu_slices(visible_gpus(), self.workers, self.processes):
            slots.put(gpus)
        with ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(slots,)) as pool:  # fmt: skip
            futures = {pool.submit(_worker_chain, chain, threads, self.processes): chain
                       for chain in chains}  # fmt: skip
            try:
                for fut in as_completed(futures):
                    try:
                        outcome = fut.result()
                    except Exception as e:  # noqa: BLE001 - the worker process died
                        outcome = _died(futures[fut], f"worker died: {type(e).__name__}: {e}")
                    outcomes.append(outcome)
                    notify(outcome)
            except KeyboardInterrupt:  # SIGINT / SIGTERM (cli.py): stop, statuses written
                pool.shutdown(wait=False, cancel_futures=True)
                _stop_workers(ctx)
                raise
        return outcomes


_worker_state = "idle"  # in a worker process: idle (waiting for a chain), chain or stopping


def _init_worker(slots: Any) -> None:
    """Worker initializer: its GPUs, and SIGINT / SIGTERM handled like the CLI's (cli.py)."""
    _take_gpus(slots)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _worker_signal)


def _worker_signal(signum: int, frame: Any) -> None:
    """Idle: exit now. In a chain: KeyboardInterrupt once, so its stage marks the run
    interrupted (a second signal is ignored while that happens); `_worker_chain` then exits."""
    global _worker_state
    if _worker_state == "idle":
        os._exit(130)
    if _worker_state == "chain":
        _worker_state = "stopping"
        raise KeyboardInterrupt


def _worker_chain(chain: Chain, threads: int, processes: int) -> Outcome:
    """`run_chain` in a worker process; interrupted, the worker leaves (no next chain)."""
    global _worker_state
    _worker_state = "chain"
    try:
        outcome = run_chain(chain, threads, processes=processes)
        if _worker_state == "chain":
            _worker_state = "idle"
            return outcome
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _stop_workers(ctx: Any) -> None:
    """Interrupt every worker (each marks its run and exits); kill those left after GRACE_S."""
    workers = ctx.active_children()
    for p in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGINT)
    deadline = time.monotonic() + GRACE_S
    for p in workers:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()


def visible_gpus() -> list[str]:
    """The GPUs this process may use (CUDA_VISIBLE_DEVICES entries, or 0..n-1); none on CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given:
        return [g.strip() for g in given.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_slices(gpus: list[str], workers: int, per: int) -> list[str | None]:
    """Each local worker's CUDA_VISIBLE_DEVICES: `per` GPUs (its runs' ranks) in turn, wrapping
    around when there are fewer GPUs than workers x per; None without GPUs."""
    if not gpus:
        return [None] * workers
    return [",".join(gpus[(w * per + j) % len(gpus)] for j in range(per)) for w in range(workers)]


def _take_gpus(slots: Any) -> None:
    """Worker initializer: this worker's GPUs (one slice per worker process)."""
    gpus = slots.get()
    if gpus is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus


class RayExecutor:
    """One Ray task per chain with the study's [resources]. Without an address, a local Ray;
    with one (`--address auto` or `HOST:PORT`), the existing cluster."""

    def __init__(self, address: str | None = None, resources: Resources | None = None):
        self.address, self.resources = address, resources or Resources()

    def run(self, chains: list[Chain], notify: Notify) -> list[Outcome]:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        started = not ray.is_initialized()
        if started:
            quiet = {"include_dashboard": False, "log_to_driver": False}
            with _keep_signal_handlers():
                if self.address:
                    ray.init(address=self.address, **quiet)
                else:
                    ray.init(num_cpus=os.cpu_count() or 2, object_store_memory=80 * 1024**2,
                             **quiet)  # fmt: skip
        try:
            return self._run(ray, chains, notify)
        finally:
            if started:
                ray.shutdown()

    def _run(self, ray: Any, chains: list[Chain], notify: Notify) -> list[Outcome]:
        task = ray.remote(run_chain).options(**self.resources.ray_options())
        threads, n = max(1, int(self.resources.cpus)), self.resources.run_processes()
        pending = {task.remote(chain, threads, processes=n): chain for chain in chains}
        outcomes = []
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                chain = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - its node or worker died max_retries + 1
                    outcome = _died(chain, f"ray worker failed: {type(e).__name__}: {e}")
                outcomes.append(outcome)
                notify(outcome)
        except KeyboardInterrupt:  # SIGINT / SIGTERM (cli.py): a running task gets a
            for ref in pending:  # KeyboardInterrupt, so its stage marks its run interrupted
                ray.cancel(ref)
            ray.wait(list(pending), num_returns=len(pending), timeout=GRACE_S)
            raise
        return outcomes


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """SIGINT and SIGTERM keep this process's handlers (cli.py: mark runs interrupted, exit 130)
    across a call that installs its own (`ray.init` puts a crash handler on SIGTERM)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            if handler is not None:
                signal.signal(sig, handler)


def _slurm(**kwargs: Any) -> Executor:
    from midtrain.study.slurm import SlurmExecutor  # imports submitit only when asked for

    return SlurmExecutor(**kwargs)


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "local": LocalExecutor, "ray": RayExecutor, "slurm": _slurm
}  # fmt: skip


def make_executor(
    name: str, workers: int = 1, address: str | None = None, resources: Resources | None = None,
    out: Path | None = None,
) -> Executor:  # fmt: skip
    """The executor `name`; `resources` (the study's [resources]) go to Ray and Slurm (whose
    job ids and logs go under the study folder `out`); local workers take only its `processes`."""
    if name not in EXECUTORS:
        raise MidtrainError(f"--executor {name!r} is unknown; use one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise MidtrainError(f"--workers {workers}: must be >= 1")
    if name == "ray":
        return EXECUTORS[name](address=address, resources=resources)
    if name == "slurm":
        return EXECUTORS[name](resources=resources, out=out)
    return EXECUTORS[name](workers=workers, processes=(resources or Resources()).run_processes())
