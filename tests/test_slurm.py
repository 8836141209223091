"""`--executor slurm` (study/slurm.py). The fast tests check [resources] and the one-line errors.
The slow ones run against a real Slurm (tests/slurm_cluster.py: Debian's slurm-wlm and munge on
localhost): a tiny study's jobs submitted, one cancelled mid-run and resumed by the same command
to the local executor's results; `study show` while jobs run; a preempted job requeued; the
driver interrupted (its jobs cancelled, exit 130)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import slurm_cluster
from _cli import run_cli

from midtrain.errors import MidtrainError
from midtrain.study.config import parse_study
from midtrain.study.executors import Resources, make_executor

TESTS, SRC = Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "src"
STUDY = {"checkpoint": "ckpt", "stores": {"web": "w", "math": "m"}, "base": {"web": 1.0},
         "candidates": [{"name": "math", "mix": {"math": 1.0}}], "tokens": 8192}  # fmt: skip
ARM, CONTROL = "math@0.5/s0", "control/s0"


def test_slurm_resources_are_checked_and_become_each_jobs_sbatch_flags():
    pytest.importorskip("submitit")
    from midtrain.study.slurm import sbatch_parameters

    r = parse_study({**STUDY, "resources": {
        "cpus": 2.5, "gpus": 2, "memory": "16GiB", "partition": "gpu", "time": "1-00:30:00",
        "sbatch": {"account": "lab", "qos": "high", "exclusive": True}}}).resources  # fmt: skip
    assert sbatch_parameters(r) == {
        "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 3, "gpus_per_node": 2,
        "partition": "gpu", "time": 24 * 60 + 30,
        "additional_parameters": {"account": "lab", "qos": "high", "exclusive": True,
                                  "mem": "16384M"},
    }  # fmt: skip
    assert Resources(time=90).time_minutes() == 90 and Resources().time_minutes() is None
    bad = {
        "time": "resources.time: 'soon': give minutes or a duration",
        "sbatch": "resources.sbatch: 'time' is set by midtrain; use the [resources] key",
    }
    for key, value in (("time", "soon"), ("sbatch", {"time": "10"})):
        with pytest.raises(MidtrainError, match=re.escape(bad[key])):
            parse_study({**STUDY, "resources": {key: value}})
    with pytest.raises(MidtrainError, match=r"resources.sbatch: '--qos': give a flag's name"):
        parse_study({**STUDY, "resources": {"sbatch": {"--qos": "x"}}})


def test_slurm_without_sbatch_or_with_a_fraction_of_a_gpu_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(MidtrainError, match="--executor slurm: sbatch not found on PATH"):
        make_executor("slurm", resources=Resources(), out=tmp_path / "s")
    (tmp_path / "bin").mkdir()
    for tool in ("sbatch", "squeue", "scancel", "srun"):
        (tmp_path / "bin" / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / "bin" / tool).chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(MidtrainError, match="resources.gpus: 0.5 is a fraction; .* use 1"):
        make_executor("slurm", resources=Resources(gpus=0.5), out=tmp_path / "s")
    (tmp_path / "bin" / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: invalid account' >&2\n"
                                            "exit 1\n")  # fmt: skip
    with pytest.raises(MidtrainError, match=r"sbatch refuses the study's jobs \(sbatch: error: "
                       r"invalid account\); fix \[resources\]"):  # fmt: skip
        make_executor("slurm", resources=Resources(sbatch={"account": "x"}), out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_a_bad_time_is_one_line_exit_2_and_nothing_written(tmp_path, monkeypatch, capsys):
    import tomli_w

    (tmp_path / "study.toml").write_text(tomli_w.dumps({**STUDY, "resources": {"time": "soon"}}))
    args = ["study", "run", tmp_path / "study.toml", "--out", tmp_path / "s", "--executor", "slurm"]
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and not (tmp_path / "s").exists()
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert "resources.time: 'soon': give minutes or a duration" in err


# --- a real Slurm ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A one-node Slurm on localhost for this module; SLURM_CONF set for the clients."""
    if missing := slurm_cluster.missing():
        pytest.skip(f"Slurm is not installed (no {', '.join(missing)}): "
                    "apt-get install slurm-wlm munge")  # fmt: skip
    if os.geteuid() != 0:
        pytest.skip("the test cluster runs slurmd as root (SlurmUser=root); run as root")
    pytest.importorskip("submitit")
    path = os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "PYTHONPATH")}
    with slurm_cluster.cluster(tmp_path_factory.mktemp("slurm")) as env:
        os.environ.update(env, PYTHONPATH=path)  # the jobs import midtrain and the toy stage
        try:
            yield env
        finally:
            for k, v in saved.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny base model, its stores, and the study run by the local executor (the reference)."""
    import torch
    from _train_fixtures import build_world, pretrain_config

    from midtrain import train
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("world")
    w = build_world(root / "world")
    train.run(pretrain_config(w, checkpoint_every=0), root / "base", progress=False)
    w["checkpoint"] = str(root / "base" / "final")
    w["local"] = root / "local"
    w["local_result"] = run_study(load_study(study_file(w, root)), w["local"])
    return w


def study_file(w: dict, d: Path) -> Path:
    import tomli_w

    study = {
        "name": "slurm", "checkpoint": w["checkpoint"], "stores": w["stores"],
        "base": {"web": 1.0}, "base_max_repetition": 50.0, "seeds": [0], "fractions": [0.5],
        "candidates": [{"name": "math", "mix": {"math": 1.0}, "max_repetition": 50.0}],
        "tokens": 60 * 128, "seq_len": 32, "batch_tokens": 128, "micro_batch": 4,
        "train": {"threads": 1, "checkpoint_every": 10},
        "resources": {"cpus": 1, "memory": "2GB", "time": 30},
    }  # fmt: skip
    d.mkdir(parents=True, exist_ok=True)
    (d / "study.toml").write_text(tomli_w.dumps(study))
    return d / "study.toml"


@pytest.fixture
def drive():
    """`drive(STUDY, OUT, **env)`: `midtrain study run STUDY --out OUT --executor slurm` in a
    process of its own (killed if the test leaves it running)."""
    procs: list[subprocess.Popen] = []

    def start(study: Path, out: Path, **env: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "midtrain.cli", "study", "run", str(study), "--out",
               str(out), "--executor", "slurm"]  # fmt: skip
        procs.append(subprocess.Popen(cmd, env=os.environ | {"COLUMNS": "400", **env},
                                      text=True, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE))  # fmt: skip
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate()


def until(check, proc: subprocess.Popen | None = None, limit: float = 180):
    """Poll `check` until it returns something truthy (the driver must still be running)."""
    deadline = time.monotonic() + limit
    while not (got := check()):
        assert proc is None or proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.05)
    return got


def run_dir(out: Path, name: str) -> Path | None:
    if not (out / "study.json").is_file():
        return None
    runs = json.loads((out / "study.json").read_text())["runs"]
    return next(out / r["dir"] for r in runs if r["name"] == name)


def job_of(out: Path, d: Path) -> str | None:
    """The Slurm job id the driver recorded for run folder `d` (STUDY/slurm/jobs.jsonl)."""
    f = out / "slurm" / "jobs.jsonl"
    recs = [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []
    return next((r["job"] for r in reversed(recs) if Path(r["dir"]) == d.resolve()), None)


def one_line(text: str) -> str:
    return " ".join(text.split())


def comparable(results) -> str:
    """The arms' verdicts and deltas (repr: a one-seed study's NaN intervals compare equal)."""
    return repr([(a.arm, a.verdict, a.primary, a.tasks, a.domains) for a in results.arms])


@pytest.mark.slow
def test_a_cancelled_job_fails_its_run_and_the_same_command_resumes_it(
    slurm, world, drive, tmp_path, monkeypatch, capsys
):
    """Every run waits 15 s at step 20 (after its step-10 state): the arm's job is cancelled
    there. The study reports that run failed with its job id (exit 1); the same command resumes
    it from its state, and the results are the local executor's."""
    from safetensors.torch import load_file

    from midtrain.study.results import StudyResult
    from midtrain.train.rundir import read_status

    study, out = study_file(world, tmp_path), tmp_path / "s"
    proc = drive(study, out, MIDTRAIN_TEST_PAUSE="step:20:15")
    arm = until(lambda: run_dir(out, ARM), proc)
    until(lambda: (arm / "state").is_dir() and job_of(out, arm), proc)
    code, shown, _ = run_cli(["study", "show", out], monkeypatch, capsys)  # while jobs run
    job = job_of(out, arm)
    assert code == 0 and "a `midtrain study run` is driving this study now" in shown
    assert any(ARM in row and "running" in row and f" {job} " in row for row in shown.splitlines())
    subprocess.run(["scancel", job], check=True)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    err = one_line(err)
    assert f"slurm: submitted job {job} for {ARM}" in err
    assert f"failed run {ARM} (interrupted): slurm job {job} cancelled without a result" in err
    assert read_status(arm).status == "interrupted" and (arm / "state").is_dir()
    print(err)

    again = drive(study, out)
    resumed = until(lambda: _from_step(arm), again)  # the rerun's first step
    _, err2 = again.communicate(timeout=240)
    assert again.returncode == 0, err2
    print(one_line(err2), f"(the rerun of {ARM} started at step {resumed})")
    assert resumed % 10 == 0 and 10 <= resumed < 60  # from its saved state, not from step 0
    assert f"{CONTROL}" not in one_line(err2).split("already done")[1]  # only the arm ran again
    steps = [json.loads(x)["step"] for x in (arm / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))
    res, ref = StudyResult.load(out / "results.json"), world["local_result"]
    assert comparable(res) == comparable(ref)
    for r in ref.control.runs + ref.arms[0].runs:
        a = load_file(world["local"] / r.dir / "final" / "model.safetensors")
        b = load_file(out / r.dir / "final" / "model.safetensors")
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def _from_step(d: Path) -> int | None:
    f = d / "status.json"
    s = json.loads(f.read_text() or "{}") if f.is_file() else {}
    return s.get("from_step") if s.get("status") == "running" and s.get("from_step") else None


@pytest.mark.slow
def test_interrupting_the_driver_cancels_its_jobs_and_exits_130(slurm, world, drive, tmp_path):
    """SIGTERM to `midtrain study run` while its runs train: every job is cancelled (none left
    in the queue), the runs say interrupted, exit 130 with the usual line."""
    from midtrain.study.slurm import ACTIVE, queue_states
    from midtrain.train.rundir import read_status

    study, out = study_file(world, tmp_path), tmp_path / "s"
    proc = drive(study, out, MIDTRAIN_TEST_PAUSE="step:5:60")
    control = until(lambda: run_dir(out, CONTROL), proc)
    until(lambda: (control / "log.jsonl").is_file(), proc)  # training in its job
    jobs = [json.loads(x)["job"] for x in (out / "slurm" / "jobs.jsonl").read_text().splitlines()]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    print(one_line(err))
    assert proc.returncode == 130
    assert "interrupted; run the same command to resume" in err
    cancelled = re.search(r"slurm: cancelled job\(s\) ([0-9, ]+)", err).group(1)
    assert job_of(out, control) in cancelled.replace(",", " ").split()
    states = queue_states(jobs)
    assert states and not any(s in ACTIVE for s in states.values()), states
    assert read_status(control).status == "interrupted"


@pytest.mark.slow
def test_a_partition_the_cluster_lacks_is_one_line_before_anything_is_written(slurm, tmp_path):
    with pytest.raises(MidtrainError, match=r"sbatch refuses the study's jobs \(.*partition"):
        make_executor("slurm", resources=Resources(partition="nope"), out=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert make_executor("slurm", resources=Resources(partition="debug"), out=tmp_path / "s")


@pytest.mark.slow
def test_a_preempted_job_is_requeued_and_its_chain_resumes(slurm, tmp_path):
    """USR2 (what Slurm sends before preemption or the time limit, submitit's signal) makes the
    job checkpoint and requeue itself: the same job id runs again and the chain resumes."""
    from _toy_stage import ToySpec

    from midtrain.jobs import Job

    d = tmp_path / "p"
    chain = [Job.of("toy", "p", d, ToySpec(value=3, steps=12, step_s=0.3)),
             Job.of("toy", "p/next", d / "next", ToySpec(value=4))]  # fmt: skip
    ex = make_executor("slurm", resources=Resources(cpus=1, time=60), out=tmp_path / "s")

    def preempt() -> None:
        until(lambda: (d / "done").is_file() and int((d / "done").read_text() or 0) >= 3)
        subprocess.run(["scancel", "--signal=USR2", job_of(tmp_path / "s", d)], check=True)

    t = threading.Thread(target=preempt, daemon=True)
    t.start()
    (outcome,) = ex.run([chain], lambda o: None)
    t.join()
    assert outcome.status == "done" and (d / "next" / "result.json").is_file()
    starts = [line.split() for line in (d / "starts").read_text().splitlines()]
    assert len(starts) == 2 and starts[0][1] == "0" and int(starts[1][1]) >= 3  # resumed
    (job,) = {json.loads(x)["job"] for x in (tmp_path / "s" / "slurm" / "jobs.jsonl").open()}
    shown = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True)
    assert "Restarts=1" in shown.stdout  # requeued: the same job ran twice
