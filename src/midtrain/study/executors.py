"""Executors run a study's jobs: `local` (in process, or N worker processes) and `ray`.

A job trains a run (resuming its directory if it exists; a finished run returns at once) and then
evaluates its final checkpoint (cached by content hash). A job that fails is retried once, then
reported as failed; the rest of the study goes on.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

Job = dict[str, Any]
Outcome = dict[str, Any]
Notify = Callable[[Outcome], None]


def run_job(job: Job, threads: int = 0) -> Outcome:
    """Train (unless `job["train"]` is None) and evaluate. Returns a small summary dict."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # also inside Ray / spawned workers
        os.environ.setdefault(var, "1")
    import torch

    from midtrain import evaluation, train

    t0 = time.perf_counter()
    if threads > 0:
        torch.set_num_threads(threads)
    run_dir = Path(job["dir"])
    metrics: dict[str, Any] = {}
    if job["train"] is not None:
        cfg = train.load_run_config(job["train"])
        metrics = train.run(cfg, run_dir, progress=False)
        checkpoint = Path(metrics.get("final_checkpoint") or run_dir / "final")
    else:
        checkpoint = Path(job["checkpoint"])
    ev = job["eval"]
    evaluation.evaluate(
        checkpoint,
        tasks=ev["tasks"],
        include_path=Path(ev["include_path"]) if ev["include_path"] else None,
        domains={k: Path(v) for k, v in ev["domains"].items()},
        out=run_dir / "eval",
        limit=ev["limit"],
        num_fewshot=ev["num_fewshot"],
        batch_size=ev["batch_size"],
        task_settings=ev["task_settings"],
    )
    return {
        "name": job["name"],
        "dir": str(run_dir),
        "status": "done",
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _guarded(job: Job, threads: int, attempts: int = 2) -> Outcome:
    """Run a job, retrying once; never raises (a failure becomes an outcome)."""
    err = ""
    for attempt in range(1, attempts + 1):
        try:
            out = run_job(job, threads)
            out["attempts"] = attempt
            return out
        except Exception as e:  # noqa: BLE001 - a failed run must not stop the study
            err = f"{type(e).__name__}: {e}"
            tb = traceback.format_exc()
    return {
        "name": job["name"],
        "dir": job["dir"],
        "status": "failed",
        "error": err,
        "traceback": tb,
        "attempts": attempts,
    }


class LocalExecutor:
    """One after another in this process, or `workers` processes with cores split between them."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, workers)

    def run(self, jobs: list[Job], notify: Notify) -> list[Outcome]:
        if self.workers == 1:
            outcomes = []
            for job in jobs:
                outcomes.append(_guarded(job, 0))
                notify(outcomes[-1])
            return outcomes
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        outcomes = []
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(self.workers, mp_context=ctx) as pool:
            futures = {pool.submit(_guarded, job, threads): job for job in jobs}
            for fut in as_completed(futures):
                try:
                    outcome = fut.result()
                except Exception as e:  # noqa: BLE001 - the worker process died
                    job = futures[fut]
                    outcome = _guarded(job, threads, attempts=1)
                    outcome.setdefault("error", f"worker died: {e}")
                outcomes.append(outcome)
                notify(outcome)
        return outcomes


class RayExecutor:
    """One Ray task per run, each with its CPU/GPU request. Without an address, a local Ray."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 0):
        self.address, self.num_cpus, self.num_gpus = address, num_cpus, num_gpus

    def run(self, jobs: list[Job], notify: Notify) -> list[Outcome]:
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
            task = ray.remote(_guarded).options(
                num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=1
            )
            threads = max(1, int(self.num_cpus))
            pending = {task.remote(job, threads): job for job in jobs}
            outcomes = []
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                ref = done[0]
                job = pending.pop(ref)
                try:
                    outcome = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - worker died twice
                    outcome = {
                        "name": job["name"],
                        "dir": job["dir"],
                        "status": "failed",
                        "error": f"ray worker failed: {type(e).__name__}: {e}",
                    }
                outcomes.append(outcome)
                notify(outcome)
            return outcomes
        finally:
            if started:
                ray.shutdown()


EXECUTORS: dict[str, Callable[..., Any]] = {"local": LocalExecutor, "ray": RayExecutor}
