"""Executors run job chains: `local` (in process, or N worker processes) and `ray`.

An executor knows nothing about stages: it hands each chain to `jobs.run_chain` (in this process,
a spawned worker or a Ray task) and reports each `Outcome` as it arrives. A chain that fails is
retried once inside `run_chain`; a worker that dies is reported as a failure and the rest go on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, Protocol

from midtrain.errors import MidtrainError
from midtrain.jobs import Chain, Outcome, run_chain

Notify = Callable[[Outcome], None]


class Executor(Protocol):
    def run(self, chains: list[Chain], notify: Notify) -> list[Outcome]: ...


def _died(chain: Chain, why: str) -> Outcome:
    last = chain[-1]
    return Outcome(name=last.name, dir=last.dir, status="failed", error=why)


class LocalExecutor:
    """One after another in this process, or `workers` processes with cores split between them."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    def run(self, chains: list[Chain], notify: Notify) -> list[Outcome]:
        outcomes = []
        if self.workers == 1:
            for chain in chains:
                outcomes.append(run_chain(chain))
                notify(outcomes[-1])
            return outcomes
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_chain, chain, threads): chain for chain in chains}
            for fut in as_completed(futures):
                try:
                    outcome = fut.result()
                except Exception as e:  # noqa: BLE001 - the worker process died
                    outcome = _died(futures[fut], f"worker died: {type(e).__name__}: {e}")
                outcomes.append(outcome)
                notify(outcome)
        return outcomes


class RayExecutor:
    """One Ray task per chain, each with its CPU/GPU request. Without an address, a local Ray."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0):
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus

    def run(self, chains: list[Chain], notify: Notify) -> list[Outcome]:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        started = not ray.is_initialized()
        if started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.address:
                kwargs["address"] = self.address
            else:
                kwargs.update(num_cpus=os.cpu_count() or 2, object_store_memory=80 * 1024**2)
            ray.init(**kwargs)
        try:
            task = ray.remote(run_chain).options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=1
            )
            threads = max(1, int(self.num_cpus))
            pending = {task.remote(chain, threads): chain for chain in chains}
            outcomes = []
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                chain = pending.pop(done[0])
                try:
                    outcome = ray.get(done[0])
                except Exception as e:  # noqa: BLE001 - worker died twice
                    outcome = _died(chain, f"ray worker failed: {type(e).__name__}: {e}")
                outcomes.append(outcome)
                notify(outcome)
            return outcomes
        finally:
            if started:
                ray.shutdown()


EXECUTORS: dict[str, Callable[..., Executor]] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, workers: int = 1, address: str | None = None) -> Executor:
    if name not in EXECUTORS:
        raise MidtrainError(f"--executor {name!r} is unknown; use one of {', '.join(EXECUTORS)}")
    if workers < 1:
        raise MidtrainError(f"--workers {workers}: must be >= 1")
    if name == "ray":
        return EXECUTORS[name](address=address)
    return EXECUTORS[name](workers=workers)
