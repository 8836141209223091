"""Jobs, stages and executors: a new stage plugs in without touching the runner or executors;
a failed job is retried once and reported while the rest go on; the study lock admits one driver."""

from __future__ import annotations

import json
import os
import sys

import pytest
from _toy_stage import ToyResult, ToySpec

from midtrain.driver import runner
from midtrain.driver.runner import study_lock
from midtrain.errors import MidtrainError
from midtrain.jobs import Job, get_stage, pending, run_chain
from midtrain.study.config import parse_study
from midtrain.study.executors import LocalExecutor, make_executor, memory_bytes


def toy(tmp_path, name, value, fail_times=0):
    return Job.of("toy", name, tmp_path / name, ToySpec(value=value, fail_times=fail_times))


def test_a_registered_toy_stage_runs_through_the_unchanged_executor(tmp_path):
    chains = [[toy(tmp_path, "a", 1)], [toy(tmp_path, "b", 2), toy(tmp_path, "b2", 3)]]
    outcomes = LocalExecutor().run(chains, lambda o: None)
    assert [o.status for o in outcomes] == ["done", "done"]
    assert get_stage("toy").cached(ToySpec(value=3), tmp_path / "b2") == ToyResult(doubled=6)
    assert not any(pending(c) for c in chains)  # the cache now answers for every job
    assert int((tmp_path / "a" / "tries").read_text()) == 1
    LocalExecutor().run(chains, lambda o: None)  # a second run computes nothing again
    assert int((tmp_path / "a" / "tries").read_text()) == 1


def test_job_round_trips_through_json_with_its_typed_spec(tmp_path):
    job = toy(tmp_path, "a", 5)
    back = Job.model_validate(json.loads(job.model_dump_json()))
    assert back == job and isinstance(back.spec, ToySpec)
    with pytest.raises(TypeError, match="takes a ToySpec"):
        Job.of("toy", "x", tmp_path, ToyResult(doubled=1))
    with pytest.raises(MidtrainError, match="stage 'nope' is unknown"):
        get_stage("nope")


def test_failed_job_is_retried_once_then_reported_and_the_rest_go_on(tmp_path):
    chains = [
        [toy(tmp_path, "ok", 1)],
        [toy(tmp_path, "flaky", 2, fail_times=1)],
        [toy(tmp_path, "broken", 3, fail_times=5), toy(tmp_path, "never", 4)],
        [toy(tmp_path, "after", 5)],
    ]
    seen = []
    outcomes = LocalExecutor().run(chains, seen.append)
    by = {o.name: o for o in outcomes}
    assert by["flaky"].status == "done" and by["flaky"].attempts == 2
    broken = by["never"]  # a chain is named by its last job and fails at its first failure
    assert broken.status == "failed" and broken.stage == "toy" and "toy failure 2" in broken.error
    assert broken.dir == str(tmp_path / "broken") and broken.attempts == 2
    assert not (tmp_path / "never").exists()  # the rest of a failed chain does not run
    assert by["after"].status == "done"
    assert [o.name for o in seen] == ["ok", "flaky", "never", "after"]


def test_bad_input_is_not_retried(tmp_path, monkeypatch):
    calls = []

    def bad(self, spec, out):
        calls.append(spec.value)
        raise MidtrainError("tokens: must be > 0; raise it")

    monkeypatch.setattr(type(get_stage("toy")), "run", bad)
    out = run_chain([toy(tmp_path, "bad", 1)])
    assert out.status == "failed" and out.error == "tokens: must be > 0; raise it"
    assert calls == [1]


def test_worker_processes_run_the_toy_stage(tmp_path):
    chains = [[toy(tmp_path, f"w{i}", i)] for i in range(3)]
    outcomes = LocalExecutor(workers=2).run(chains, lambda o: None)
    assert sorted(o.status for o in outcomes) == ["done"] * 3
    assert [get_stage("toy").cached(ToySpec(value=i), tmp_path / f"w{i}") for i in range(3)] == [
        ToyResult(doubled=2 * i) for i in range(3)
    ]


def test_local_workers_each_get_their_own_gpus(tmp_path, monkeypatch):
    """`--workers 2` with 2 ranks per run on a 4-GPU node: worker slices 0,1 and 2,3 (not every
    worker on GPU 0); without GPUs nothing is set."""
    from midtrain.study import executors
    from midtrain.study.executors import gpu_slices

    assert gpu_slices([], 2, 1) == [None, None]
    assert gpu_slices(["0", "1", "2", "3"], 2, 2) == ["0,1", "2,3"]
    assert gpu_slices(["0", "1"], 3, 1) == ["0", "1", "0"]  # more workers than GPUs: shared
    monkeypatch.setattr(executors, "visible_gpus", lambda: ["0", "1", "2", "3"])
    chains = [[toy(tmp_path, f"g{i}", i)] for i in range(6)]
    for chain in chains:
        chain[0].spec.steps, chain[0].spec.step_s = 3, 0.2
    outcomes = LocalExecutor(workers=2, processes=2).run(chains, lambda o: None)
    assert [o.status for o in outcomes] == ["done"] * 6
    seen = {(tmp_path / f"g{i}" / "gpus").read_text() for i in range(6)}
    assert seen == {"0,1", "2,3"}, seen


def test_study_lock_admits_one_driver(tmp_path):
    with study_lock(tmp_path / "s"):
        with pytest.raises(MidtrainError, match="another midtrain process"):
            with study_lock(tmp_path / "s"):
                pass
    with study_lock(tmp_path / "s"):  # released afterwards
        pass


def test_unknown_executor_is_a_one_line_error():
    with pytest.raises(
        MidtrainError, match="--executor 'pbs' is unknown; use one of local, ray, slurm"
    ):
        make_executor("pbs", 1, None)
    with pytest.raises(MidtrainError, match="--workers 0"):
        make_executor("local", 0, None)


def test_study_resources_become_each_chain_ray_task_options(tmp_path, monkeypatch):
    study = {"checkpoint": "ckpt", "stores": {"web": "w", "math": "m"}, "base": {"web": 1.0},
             "candidates": [{"name": "math", "mix": {"math": 1.0}}], "tokens": 8192,
             "resources": {"cpus": 4, "gpus": 1, "memory": "16GB", "custom": {"a100": 1}}}  # fmt: skip
    cfg = parse_study(study)
    assert cfg.resources.ray_options() == {
        "num_cpus": 4, "num_gpus": 1, "memory": 16 * 10**9, "resources": {"a100": 1},
        "max_retries": 3, "retry_exceptions": False,
    }  # fmt: skip
    assert parse_study({**study, "resources": {}}).resources.ray_options()["num_cpus"] == 1
    assert memory_bytes("512 MiB") == 512 * 2**20 and memory_bytes(10**9) == 10**9
    with pytest.raises(MidtrainError, match=r"resources.memory: 'lots': give bytes or a size"):
        parse_study({**study, "resources": {"memory": "lots"}})
    seen = {}

    def capture(name, workers, address, resources, out=None):
        seen.update(name=name, address=address, resources=resources)
        raise MidtrainError("stop here")

    monkeypatch.setattr(runner, "make_executor", capture)
    with pytest.raises(MidtrainError, match="stop here"):
        runner.run_study(cfg, tmp_path, executor="ray", address="auto")
    assert seen == {"name": "ray", "address": "auto", "resources": cfg.resources}
    ex = make_executor("ray", 1, "10.0.0.1:6379", cfg.resources)
    assert ex.address == "10.0.0.1:6379" and ex.resources.custom == {"a100": 1}


def test_processes_per_run_follow_the_chains_gpus_unless_given_and_reach_both_executors():
    from midtrain.study.executors import LocalExecutor, Resources

    assert [Resources(gpus=g).run_processes() for g in (0, 0.5, 1, 2, 8)] == [1, 1, 1, 2, 8]
    assert Resources(gpus=8, processes=1).run_processes() == 1
    assert Resources(processes=2).run_processes() == 2
    local = make_executor("local", 1, None, Resources(gpus=4))
    assert isinstance(local, LocalExecutor) and local.processes == 4
    assert make_executor("local", 2, None, None).processes == 1


def test_run_chain_sets_the_processes_of_its_runs_only_while_it_runs(tmp_path, monkeypatch):
    from midtrain import jobs
    from midtrain.train import launch

    monkeypatch.delenv(launch.PROCESSES_ENV, raising=False)
    seen = []
    monkeypatch.setattr(jobs, "_run_chain", lambda *a: seen.append(launch.processes_per_run()))
    jobs.run_chain([toy(tmp_path, "a", 1)], processes=3)
    assert seen == [3] and launch.PROCESSES_ENV not in os.environ
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a distributed job: no ranks of its own
    jobs.run_chain([toy(tmp_path, "a", 1)], processes=3)
    assert seen == [3, 1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_rank_dies_with_its_launcher_and_never_outlives_it(tmp_path):
    """A rank started for a study's N-process run (train/launch.py) is SIGKILLed when its
    launcher (the chain's worker) dies, and exits at once when the launcher is already gone."""
    import signal
    import subprocess
    import time

    from midtrain.env import LAUNCHER_ENV

    rank = "from midtrain.env import die_with_launcher; die_with_launcher(); import time; time.sleep(60)"
    pid_file = tmp_path / "rank.pid"
    launcher = (
        "import os, subprocess, sys, time\n"
        f"env = dict(os.environ, {LAUNCHER_ENV}=str(os.getpid()))\n"
        f"p = subprocess.Popen([sys.executable, '-c', {rank!r}], env=env)\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher])
    deadline = time.time() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.time() < deadline
        time.sleep(0.05)
    child = int(pid_file.read_text())
    time.sleep(1.0)  # the rank has imported midtrain and armed its death signal
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 10
    while os.path.exists(f"/proc/{child}") and "zombie" not in open(f"/proc/{child}/status").read():
        assert time.time() < deadline, "the rank outlived its launcher"
        time.sleep(0.05)
    orphan = subprocess.run([sys.executable, "-c", rank], env=dict(os.environ, **{LAUNCHER_ENV: "1"}),
                            timeout=30)  # fmt: skip
    assert orphan.returncode == 1  # its launcher (pid 1 is not its parent) is gone: exit at once
