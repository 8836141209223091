"""Where a study's runs stand while it runs (`midtrain study show`): each run's status and step
from its folder, and its Slurm job (STUDY/slurm/jobs.jsonl) when `--executor slurm` runs it."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from rich.table import Table

from midtrain.console import safe
from midtrain.io import read_json
from midtrain.train.rundir import read_status


def driven(out: Path) -> bool:
    """Whether a `midtrain study run` holds the study's lock now (runner.study_lock)."""
    lock = Path(out) / ".lock"
    if not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def progress_table(out: Path) -> Table:
    """One row per run of STUDY/study.json: status, steps done, Slurm job."""
    from midtrain.study.slurm import recorded_jobs

    out = Path(out)
    jobs = {str(Path(d).resolve()): rec for d, rec in recorded_jobs(out).items()}
    t = Table(title="runs")
    for col in ("run", "status", "step", "slurm job"):
        t.add_column(col)
    for run in read_json(out / "study.json")["runs"]:
        d = out / run["dir"]
        status = read_status(d) if d.is_dir() else None
        state = status.status if status else "not started"
        if (d / "eval" / "eval.json").is_file():
            state = "evaluated"
        job = jobs.get(str(d.resolve()), {}).get("job", "–")
        t.add_row(safe(run["name"]), state, _step(d, status), safe(str(job)))
    return t


def _step(d: Path, status) -> str:
    """The run's last logged step (the tail of its log.jsonl), else its status's."""
    log = d / "log.jsonl"
    if log.is_file():
        with open(log, "rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
        for line in reversed(lines):
            try:
                return str(json.loads(line)["step"])
            except (ValueError, KeyError, TypeError):
                continue
    return str(status.step) if status and status.step is not None else "–"
