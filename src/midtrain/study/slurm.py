"""`--executor slurm`: one Slurm job per chain, submitted through submitit with the study's
[resources] (cpus, gpus, memory, partition, time, extra sbatch flags).

Each job runs `jobs.run_chain` on a node. A job that Slurm preempts or that reaches its time limit
gets submitit's signal (USR2, 90 s before): submitit calls `ChainJob.checkpoint`, requeues the job
(same id) and the chain resumes from its run folders. The driver polls `squeue`: a job with a
result reports its `Outcome`; a job that left the queue without one (cancelled, failed, node lost)
is a failed run naming the job, its run marked interrupted, so running the study again resumes it
from its last checkpoint. Ctrl-C / SIGTERM of the driver cancels its jobs (`scancel`).

Job ids go to STUDY/slurm/jobs.jsonl (one line per job; `midtrain study show` reads them) and
submitit's scripts, pickles and logs to `slurm_folder` (default STUDY/slurm).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, TypedDict

from midtrain.console import err_console, safe
from midtrain.errors import MidtrainError
from midtrain.jobs import Chain, Outcome, run_chain
from midtrain.study.resources import GRACE_S, Notify, Resources, memory_bytes

POLL_S = 2.0  # between two squeue calls
JOBS_FILE = "jobs.jsonl"
# squeue states of a job that may still produce a result (COMPLETING: its processes still run)
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
          "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
          "PREEMPTED"}  # fmt: skip


class JobRecord(TypedDict):
    """A line of STUDY/slurm/jobs.jsonl: one submitted job."""

    job: str  # the Slurm job id
    run: str  # the chain's first run
    dir: str  # its run folder
    log: str  # submitit's stdout file
    time: float  # submitted at (Unix seconds)


class SbatchParameters(TypedDict, total=False):
    """submitit's `update_parameters` keywords that a study sets (its sbatch options)."""

    nodes: int
    ntasks_per_node: int
    cpus_per_task: int
    gpus_per_node: int
    partition: str
    time: int  # minutes
    additional_parameters: dict[str, str | int | bool]  # [resources] sbatch, and mem


class ChainJob:
    """A chain as a checkpointable submitit function: preempted or timed out, submitit requeues
    the same call, and `run_chain` resumes every job from its folder."""

    def __call__(self, chain: Chain, threads: int, processes: int) -> Outcome:
        return run_chain(chain, threads, processes=processes)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


class SlurmExecutor:
    """One Slurm job per chain; `out` is the study folder (job ids, default log folder)."""

    def __init__(self, resources: Resources | None = None, out: Path | None = None):
        self.resources, self.out = resources or Resources(), Path(out or ".").resolve()
        check_slurm(self.resources)
        folder = self.resources.slurm_folder
        self.folder = Path(folder).resolve() if folder else self.out / "slurm"
        test_submission(submitit_executor(self.resources, self.folder))

    def run(self, chains: list[Chain], notify: Notify) -> list[Outcome]:
        ex, jobs = submitit_executor(self.resources, self.folder), {}
        threads, n = max(1, math.ceil(self.resources.cpus)), self.resources.run_processes()
        try:
            failed = []
            for chain in chains:
                ex.update_parameters(job_name=f"midtrain-{chain[0].name}")
                try:
                    job = ex.submit(ChainJob(), chain, threads, n)
                except Exception as e:  # noqa: BLE001 - sbatch refused it: this chain fails
                    failed.append(_unsubmitted(chain, e))
                    notify(failed[-1])
                    continue
                jobs[job.job_id] = (job, chain)
                self._record(job, chain)
            return failed + _wait(jobs, notify)
        except KeyboardInterrupt:  # SIGINT / SIGTERM (cli.py): the jobs go too
            cancel(jobs)
            raise

    def _record(self, job: Any, chain: Chain) -> None:
        err_console.print(f"slurm: submitted job {job.job_id} for {safe(chain[0].name)}",
                          highlight=False)  # fmt: skip
        (self.out / "slurm").mkdir(parents=True, exist_ok=True)
        line: JobRecord = {"job": job.job_id, "run": chain[0].name, "dir": chain[0].dir,
                "log": str(job.paths.stdout), "time": time.time()}  # fmt: skip
        with open(self.out / "slurm" / JOBS_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")


def check_slurm(r: Resources) -> None:
    """What a Slurm submission needs, before anything is written: submitit, sbatch, whole GPUs."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise MidtrainError("--executor slurm: submitit is not installed; "
                            "pip install 'midtrain[slurm]'") from None  # fmt: skip
    for tool in ("sbatch", "squeue", "scancel", "srun"):
        if shutil.which(tool) is None:
            raise MidtrainError(f"--executor slurm: {tool} not found on PATH; run the study on "
                                "a machine that submits to Slurm (a login node)")  # fmt: skip
    if r.gpus != int(r.gpus):
        raise MidtrainError(f"resources.gpus: {r.gpus:g} is a fraction; Slurm gives whole GPUs, "
                            f"use {math.ceil(r.gpus)}")  # fmt: skip


def test_submission(ex: Any) -> None:
    """`sbatch --test-only` of a job with the study's flags: a partition, account, time or size
    the cluster refuses is one line before anything is written."""
    script = ex._make_submission_file_text("true", "test")
    r = subprocess.run(["sbatch", "--test-only"], input=script, capture_output=True, text=True,
                       check=False)  # fmt: skip
    if r.returncode != 0:
        lines = [x.strip() for x in (r.stderr or r.stdout).splitlines() if x.strip()]
        why = lines[-1] if lines else f"exit {r.returncode}"
        raise MidtrainError(f"resources: sbatch refuses the study's jobs ({why}); fix [resources] "
                            "(partition, time, memory, gpus, sbatch) or the Slurm setup "
                            "(SLURM_CONF)")  # fmt: skip


def _unsubmitted(chain: Chain, e: Exception) -> Outcome:
    lines = [x.strip() for x in str(e).splitlines() if x.strip()]
    why = lines[-1] if lines else type(e).__name__
    return Outcome(name=chain[-1].name, dir=chain[0].dir, status="failed", stage=chain[0].stage,
                   error=f"sbatch failed: {why}")  # fmt: skip


def sbatch_parameters(r: Resources) -> SbatchParameters:
    """submitit's parameters of every job: one task with the chain's cores, GPUs and memory."""
    extra = dict(r.sbatch)
    if r.memory is not None:
        extra["mem"] = f"{math.ceil(memory_bytes(r.memory) / 2**20)}M"
    params: SbatchParameters = {"nodes": 1, "ntasks_per_node": 1,
                              "cpus_per_task": max(1, math.ceil(r.cpus)),
                              "additional_parameters": extra}  # fmt: skip
    if r.gpus:
        params["gpus_per_node"] = int(r.gpus)
    if r.partition:
        params["partition"] = r.partition
    # without a time limit, submitit still needs one for its own bookkeeping (timed out or
    # preempted): a year; the sbatch line is dropped below, so the partition's default applies
    params["time"] = r.time_minutes() or 525600
    return params


def submitit_executor(r: Resources, folder: Path) -> Any:
    import submitit

    class Executor(submitit.SlurmExecutor):
        def _make_submission_file_text(self, command: str, uid: str) -> str:
            text = super()._make_submission_file_text(command, uid)
            return text if r.time is not None else re.sub(r"(?m)^#SBATCH --time=.*\n", "", text)

    ex = Executor(folder=folder, max_num_timeout=3)
    ex.update_parameters(**sbatch_parameters(r))
    return ex


def _wait(jobs: dict[str, tuple[Any, Chain]], notify: Notify) -> list[Outcome]:
    """Poll until every job has ended; each one's Outcome notified as it ends."""
    outcomes = []
    while jobs:
        states = queue_states(list(jobs))
        for job_id in list(jobs):
            outcome = _ended(*jobs[job_id], states)
            if outcome is not None:
                del jobs[job_id]
                outcomes.append(outcome)
                notify(outcome)
        if jobs:
            time.sleep(POLL_S)
    return outcomes


def _ended(job: Any, chain: Chain, states: dict[str, str] | None) -> Outcome | None:
    """The job's Outcome once it has ended; None while it may still run (or squeue failed).
    squeue is asked before the result file is looked for: a job that ended has written it."""
    state = None if states is None else states.get(job.job_id, "GONE")
    with contextlib.suppress(OSError):  # refresh a shared file system's view of the folder
        job.paths.folder.chmod(job.paths.folder.stat().st_mode)
    if job.paths.result_pickle.exists():
        from submitit.core.utils import pickle_load

        kind, result = pickle_load(job.paths.result_pickle)
        if kind == "success":
            return result
        lines = [x for x in str(result).splitlines() if x.strip()]
        return _failed(job, chain, f"failed: {lines[-1] if lines else kind}")
    if state is None or state in ACTIVE:
        return None
    return _failed(job, chain, f"{state.lower()} without a result")


def _failed(job: Any, chain: Chain, why: str) -> Outcome:
    """A failed Outcome naming the job and its log; the job's run marked interrupted."""
    from midtrain.train.rundir import mark_interrupted

    at = next((j for j in chain if j.cached() is None), chain[-1])
    mark_interrupted(Path(at.dir))
    return Outcome(name=chain[-1].name, dir=at.dir, status="failed", stage=at.stage,
                   error=f"slurm job {job.job_id} {why}; log {job.paths.stderr}")  # fmt: skip


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """squeue's state of each job it still knows; None when squeue itself failed."""
    cmd = ["squeue", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(job_ids)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return {} if "Invalid job id" in r.stderr else None
    states = (line.split("|", 1) for line in r.stdout.splitlines() if "|" in line)
    return {i.strip(): s.strip().upper() for i, s in states}


def cancel(jobs: dict[str, tuple[Any, Chain]]) -> None:
    """scancel the jobs, wait (GRACE_S at most) until their processes are gone, mark their runs
    interrupted."""
    if not jobs:
        return
    ids = list(jobs)
    subprocess.run(["scancel", *ids], capture_output=True, check=False)
    err_console.print(f"slurm: cancelled job(s) {', '.join(ids)}", highlight=False)
    deadline = time.monotonic() + 2 * GRACE_S
    with contextlib.suppress(KeyboardInterrupt):
        while time.monotonic() < deadline:
            states = queue_states(ids)
            if states is not None and not any(s in ACTIVE for s in states.values()):
                break
            time.sleep(POLL_S / 4)
    from midtrain.train.rundir import mark_interrupted

    for _, chain in jobs.values():
        for j in chain:
            mark_interrupted(Path(j.dir))


def recorded_jobs(out: Path) -> dict[str, JobRecord]:
    """The last job submitted for each run folder of the study in `out` (STUDY/slurm/jobs.jsonl)."""
    f = Path(out) / "slurm" / JOBS_FILE
    if not f.is_file():
        return {}
    last: dict[str, JobRecord] = {}
    for line in f.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            rec = json.loads(line)
            last[str(rec["dir"])] = rec
    return last
