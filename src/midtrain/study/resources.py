"""What every executor shares (study/executors.py: local, Ray; study/slurm.py): the `[resources]`
table, the callback each finished chain is reported to, an interrupted worker's grace period."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypedDict

from pydantic import field_validator

from midtrain.jobs import Outcome
from midtrain.schema import Strict, field

Notify = Callable[[Outcome], None]
GRACE_S = 30.0  # an interrupted worker's time to mark its run and exit before SIGKILL


class RayOptions(TypedDict, total=False):
    """The `.options(...)` of a chain's Ray task."""

    num_cpus: float
    num_gpus: float
    memory: int  # bytes
    resources: dict[str, float]  # [resources] custom
    max_retries: int
    retry_exceptions: bool


class Resources(Strict):
    """The study's [resources]: what each chain (a Ray task, a Slurm job) asks for; local: processes."""

    cpus: float = field(1.0, ge=0, description="CPU cores per chain; also its torch threads.")
    gpus: float = field(0.0, ge=0, description="GPUs per chain (fractions share one GPU).")
    processes: int = field(
        0, ge=0, description="Processes per training run and SFT probe of a chain (DDP/FSDP2 "
        "ranks, one per GPU): 0 = the chain's GPUs when it asks for 2 or more, else 1. The "
        "local executor uses this key too.",
    )  # fmt: skip
    memory: int | str | None = field(
        None,
        description='Memory per chain: bytes, or a string such as "16GB" or "512MiB" (Ray '
        "schedules by it, it is not enforced; Slurm: each job's --mem).",
    )
    custom: dict[str, float] = field(
        {}, description="Custom Ray resources per chain, e.g. {a100 = 1} (nodes must offer them)."
    )
    max_retries: int = field(
        3, ge=0, description="Times Ray reruns a chain whose node or worker died; it resumes "
        "from its run folder, so the study folder must be on storage every node shares.",
    )  # fmt: skip
    partition: str | None = field(
        None, description="Slurm: the partition of each chain's job (default: the cluster's)."
    )
    time: int | str | None = field(
        None, description='Slurm: each job\'s time limit, minutes or "HH:MM:SS" ("D-HH:MM:SS"); '
        "a job near it is requeued and resumes from its run folder (default: the partition's).",
    )  # fmt: skip
    sbatch: dict[str, str | int | bool] = field(
        {}, description='Slurm: extra sbatch flags of each job, e.g. {account = "x", qos = "y"} '
        "(true: a flag without a value).",
    )  # fmt: skip
    slurm_folder: str | None = field(
        None, description="Slurm: where submitit writes each job's script, logs and result "
        "(default: STUDY/slurm); on storage the nodes share.",
    )  # fmt: skip

    @field_validator("memory")
    @classmethod
    def _memory_bytes(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            memory_bytes(v)
        return v

    @field_validator("time")
    @classmethod
    def _time_minutes(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            slurm_minutes(v)
        return v

    @field_validator("sbatch")
    @classmethod
    def _sbatch_flags(cls, v: dict[str, str | int | bool]) -> dict[str, str | int | bool]:
        for key, value in v.items():
            if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
                raise ValueError(f"{key!r}: give a flag's name without dashes, e.g. qos")
            if key.replace("_", "-").lower() in SBATCH_OWN:
                raise ValueError(f"{key!r} is set by midtrain; use the [resources] key for it "
                                 "(cpus, gpus, memory, partition, time, slurm_folder)")  # fmt: skip
            if value is False:
                raise ValueError(f"{key} = false: remove the key instead")
        return v

    def time_minutes(self) -> int | None:
        """`time` in whole minutes (None: not set)."""
        return None if self.time is None else slurm_minutes(self.time)

    def run_processes(self) -> int:
        """`processes`, with 0 resolved: whole GPUs of the chain when 2 or more, else 1."""
        return self.processes or (int(self.gpus) if self.gpus >= 2 else 1)

    def ray_options(self) -> RayOptions:
        """The `.options(...)` of a chain's task."""
        opts: RayOptions = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.memory is not None:
            opts["memory"] = memory_bytes(self.memory)
        if self.custom:
            opts["resources"] = dict(self.custom)
        # run_chain never raises (a job's failure is an Outcome, retried there once), so only a
        # lost node or worker is retried by Ray.
        opts |= {"max_retries": self.max_retries, "retry_exceptions": False}
        return opts


# sbatch flags a study sets through [resources] or that submitit owns
SBATCH_OWN = {"partition", "time", "mem", "cpus-per-task", "gpus-per-node", "nodes",
              "ntasks-per-node", "job-name", "output", "error", "signal", "open-mode",
              "array"}  # fmt: skip


def slurm_minutes(v: int | str) -> int:
    """Minutes from an int or "HH:MM:SS" / "D-HH:MM:SS" (rounded up; ValueError otherwise)."""
    if isinstance(v, int):
        if v <= 0:
            raise ValueError("must be > 0 minutes")
        return v
    m = re.fullmatch(r"\s*(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)\s*", v)
    if not m:
        raise ValueError(f'{v!r}: give minutes or a duration such as "04:00:00" or "1-12:00:00"')
    d, h, mi, sec = (int(x or 0) for x in m.groups())
    total = math.ceil(((d * 24 + h) * 60 + mi) + sec / 60)
    if total <= 0:
        raise ValueError(f"{v!r}: must be longer than 0")
    return total


UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def memory_bytes(v: int | str) -> int:
    """Bytes from an int or a string like "16GB" / "512 MiB" (ValueError otherwise)."""
    if isinstance(v, int):
        if v <= 0:
            raise ValueError("must be > 0 bytes")
        return v
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", v)
    if not m or m.group(2).upper() not in UNITS or float(m.group(1)) <= 0:
        raise ValueError(f'{v!r}: give bytes or a size such as "16GB" or "512MiB"')
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])
