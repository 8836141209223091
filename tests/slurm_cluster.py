"""A one-node Slurm cluster on localhost, for tests: munged, slurmctld and slurmd (Debian's
slurm-wlm and munge) started as plain processes in a temporary folder, no systemd, no cgroups,
no accounting database. `python tests/slurm_cluster.py DIR` starts one and waits (Ctrl-C stops
it); `SLURM_CONF=DIR/slurm.conf sbatch ...` then submits to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")
CONF = """\
ClusterName=midtrain-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=5
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerParameters=bf_interval=1,sched_interval=2
KillWait=5
MinJobAge=600
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def missing() -> list[str]:
    """The binaries this cluster needs that are not installed."""
    return [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _memory_mb() -> int:
    """Most of this machine's memory in MB (slurmd drains a node that reports less than its
    configured RealMemory)."""
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
    return total_kb // 1024 * 3 // 4


def write_config(d: Path) -> dict[str, str]:
    """The munge key and slurm.conf in `d`; the environment its clients need."""
    for sub in ("state", "spool", "munge"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(d / "munge", 0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o400)
    host = socket.gethostname().split(".")[0]
    conf = CONF.format(host=host, ctld_port=_free_port(), slurmd_port=_free_port(),
                       sock=d / "munge" / "munge.sock", d=d, cpus=os.cpu_count() or 1,
                       memory=_memory_mb())  # fmt: skip
    (d / "slurm.conf").write_text(conf)
    return {"SLURM_CONF": str(d / "slurm.conf")}


def _start(d: Path, env: dict[str, str]) -> list[subprocess.Popen]:
    m = d / "munge"
    munged = [_exe("munged"), "--foreground", "--force", f"--socket={m}/munge.sock",
              f"--key-file={m}/munge.key", f"--pid-file={m}/munged.pid",
              f"--log-file={m}/munged.log", f"--seed-file={m}/munged.seed"]  # fmt: skip
    procs = [_popen(munged, d / "munged.out", env)]
    _wait(lambda: (m / "munge.sock").exists(), "munged socket", d, procs)
    procs.append(_popen([_exe("slurmctld"), "-D", "-i"], d / "slurmctld.out", env))
    procs.append(_popen([_exe("slurmd"), "-D"], d / "slurmd.out", env))
    return procs


def _popen(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=os.environ | env,
                                start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip


def _die_with_parent() -> None:
    """In a daemon: SIGTERM when the process that started it dies (no leftover daemons)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _node_state(env: dict[str, str]) -> str:
    r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True,
                       env=os.environ | env, check=False)  # fmt: skip
    return r.stdout.strip()


def _queue(env: dict[str, str]) -> str:
    """The jobs still pending, running or completing."""
    r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True,
                       env=os.environ | env, check=False)  # fmt: skip
    return r.stdout.strip() if r.returncode == 0 else ""


def _wait(ready, what: str, d: Path, procs: list[subprocess.Popen], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not ready():
        dead = [p.args[0] for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            logs = "".join(f"\n--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(d.glob("*.out"))
                           + sorted(d.glob("*.log")))  # fmt: skip
            raise RuntimeError(f"slurm test cluster: no {what} (exited: {dead}){logs}")
        time.sleep(0.2)


def _stop(procs: list[subprocess.Popen]) -> None:
    """slurmd, then slurmctld, then munged (a job step still ending needs the other two)."""
    for p in reversed(procs):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@contextlib.contextmanager
def cluster(d: Path) -> Iterator[dict[str, str]]:
    """A running one-node cluster in `d`; yields the environment (SLURM_CONF) its clients need.
    Every job left is cancelled and every daemon stopped on the way out."""
    env = write_config(Path(d).resolve())
    procs = _start(Path(d).resolve(), env)
    try:
        _wait(lambda: _node_state(env) == "idle", "idle node", Path(d), procs)
        yield env
    finally:
        subprocess.run(["scancel", "--full", "-u", "root"], env=os.environ | env,
                       capture_output=True, check=False)  # fmt: skip
        with contextlib.suppress(RuntimeError):  # the jobs' steps gone, so slurmd stops at once
            _wait(lambda: not _queue(env), "empty queue", Path(d), procs, limit=20)
        _stop(procs)
        _sweep(env["SLURM_CONF"])


def _sweep(conf: str) -> None:
    """SIGKILL what this cluster started and left (a job step, a job's process): every process
    but this one whose environment names its slurm.conf."""
    mark = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            environ = (proc / "environ").read_bytes().split(b"\0")
            if int(proc.name) != os.getpid() and mark in environ:
                os.kill(int(proc.name), signal.SIGKILL)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "slurm-test")
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with cluster(folder) as e:
        print(f"export SLURM_CONF={e['SLURM_CONF']}  # Ctrl-C stops the cluster", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
