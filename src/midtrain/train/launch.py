"""One job of a study on N processes: the ranks started as torchrun would start them.

A study's `[resources] processes` (default: the chain's GPUs when it asks for 2 or more) makes
each training run and SFT probe of a chain a job of N processes on the chain's node. `run_chain`
sets `PROCESSES_ENV`; the train and sft stages then call `run_ranks`, which writes the job's
config to a temporary TOML, starts `python -m midtrain.cli COMMAND --config ... --out OUT` once
per rank with torchrun's variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT on a free
local port; each rank binds cuda:LOCAL_RANK of the GPUs the chain was given) and waits. A rank
that fails takes the others down (SIGKILL after `GRACE_S`), as torchrun's agent would; on Linux
every rank also dies with this process (`env.die_with_launcher`), so a chain whose Ray worker is
lost leaves no orphan writing to the run folder while Ray reruns the chain elsewhere.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from midtrain.env import LAUNCHER_ENV
from midtrain.errors import MidtrainError
from midtrain.jobs import PROCESSES_ENV  # re-exported: set by jobs.run_chain

GRACE_S = 10.0  # after one rank fails, the others' time to exit on their own before SIGKILL


def processes_per_run() -> int:
    """N processes for this chain's runs; 1 inside a job that is itself distributed."""
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return 1
    return max(1, int(os.environ.get(PROCESSES_ENV, "1") or 1))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    argv: list[str],
    config: dict[str, Any],  # a config's JSON dump, written as TOML for the ranks
    out: Path,
    n: int,
) -> None:
    """`midtrain ARGV --config <config as TOML> --out OUT` on n local ranks; raises like the
    single-process command: a one-line `MidtrainError` for exit 2 or 3 (bad input, diverged),
    RuntimeError for anything else (a crash; `run_chain` retries it once)."""
    import tomli_w

    threads = max(1, _threads() // n)
    with tempfile.TemporaryDirectory(prefix="midtrain-ranks-") as tmp:
        cfg = Path(tmp) / "config.toml"
        cfg.write_text(tomli_w.dumps(config), encoding="utf-8")
        cmd = [sys.executable, "-m", "midtrain.cli", *argv, "--config", str(cfg), "--out", str(out)]
        codes, err = _start_and_wait(cmd, n, threads, Path(tmp))
    if codes == [0] * n:
        return
    last = next((line for line in reversed(err.splitlines()) if line.strip()), "")
    if 2 in codes or 3 in codes:
        raise MidtrainError(last.removeprefix("error: ") or f"{argv[0]} exited {codes}")
    raise RuntimeError(f"{argv[0]} on {n} processes exited {codes}: {last}")


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGINT every rank still running (each marks its run interrupted and exits, cli.py), then
    SIGKILL those left after GRACE_S."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _start_and_wait(cmd: list[str], n: int, threads: int, tmp: Path) -> tuple[list[int], str]:
    """Start the ranks (stderr to files), kill them all when one fails; (exit codes, rank 0's
    stderr when it failed cleanly, else the first failing rank's)."""
    port, procs, logs = str(_free_port()), [], []
    base = {k: v for k, v in os.environ.items() if k != PROCESSES_ENV}
    for rank in range(n):
        env = {**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(n),
               "LOCAL_WORLD_SIZE": str(n), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "OMP_NUM_THREADS": str(threads), LAUNCHER_ENV: str(os.getpid())}  # fmt: skip
        logs.append(open(tmp / f"rank-{rank}.err", "w+", encoding="utf-8"))  # noqa: SIM115
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=logs[-1]))
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = time.monotonic()  # the others get GRACE_S to print and exit
            if failed_at is not None and time.monotonic() - failed_at > GRACE_S:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGKILL)
            time.sleep(0.1)
    finally:  # this process interrupted: the ranks mark their run interrupted, then go
        _stop(procs)
    codes = [p.returncode for p in procs]
    texts = []
    for f in logs:
        f.seek(0)
        texts.append(f.read())
        f.close()
    failing = next((i for i, c in enumerate(codes) if c not in (0, -signal.SIGKILL)), 0)
    said = codes[0] in (2, 3)  # rank 0 printed the job's one-line error
    return codes, texts[0] if said else texts[failing]
