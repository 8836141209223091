"""Ray at cluster scale, simulated: worker nodes offering a custom resource, a head that runs
nothing, a worker node removed mid-study. Its chains are rerun by Ray on another node and resume
from their folders (the shared storage); every chain finishes with its result cached. One test
uses toy chains, one a tiny real study (train, then evaluate) through `run_study`."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from _toy_stage import ToyResult, ToySpec

from midtrain.jobs import Job, get_stage, pending
from midtrain.study.executors import RayExecutor, Resources

pytestmark = pytest.mark.slow
TESTS, SRC = Path(__file__).resolve().parent, Path(__file__).resolve().parents[1] / "src"
SMALL = 80 * 1024**2  # object store per node


def _starts(folder: Path) -> list[tuple[str, int]]:
    """(node, first step) of each start of a slow toy job."""
    f = folder / "starts"
    lines = f.read_text().split("\n") if f.exists() else []
    return [(n, int(s)) for n, s in (x.split() for x in lines if x.strip())]


def _remove_when_busy(cluster, node, folders: list[Path], removed: list[str]) -> None:
    """Remove `node` once a job on it has done two steps (so its chain must resume elsewhere)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for d in folders:
            started = [n for n, _ in _starts(d)]
            done = int((d / "done").read_text() or 0) if (d / "done").exists() else 0
            if node.node_id in started and done >= 2:
                cluster.remove_node(node, allow_graceful=False)
                removed.append(d.name)
                return
        time.sleep(0.1)


def test_chains_lost_with_their_node_rerun_elsewhere_and_resume(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    path = os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)  # the nodes' workers import the toy stage
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    head = {"num_cpus": 0, "object_store_memory": SMALL, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = [
        cluster.add_node(num_cpus=2, resources={"trainer": 2}, object_store_memory=SMALL)
        for _ in range(2)
    ]
    cluster.wait_for_nodes()
    slow = {"steps": 10, "step_s": 0.3}
    chains = [
        [
            Job.of("toy", f"r{i}", tmp_path / f"r{i}", ToySpec(value=i, **slow)),
            Job.of("toy", f"r{i}/eval", tmp_path / f"r{i}" / "eval", ToySpec(value=10 + i)),
        ]
        for i in range(4)
    ]
    removed: list[str] = []
    folders = [tmp_path / f"r{i}" for i in range(4)]
    killer = threading.Thread(
        target=_remove_when_busy, args=(cluster, nodes[1], folders, removed), daemon=True
    )
    resources = Resources(cpus=1, memory="50MB", custom={"trainer": 1}, max_retries=2)
    ex = RayExecutor(address=cluster.address, resources=resources)
    killer.start()
    try:
        outcomes = ex.run(chains, lambda o: None)
    finally:
        killer.join(timeout=5)
        cluster.shutdown()
    assert removed, "the node was never busy"
    assert sorted(o.name for o in outcomes) == [f"r{i}/eval" for i in range(4)]
    assert [o.status for o in outcomes] == ["done"] * 4, [o.error for o in outcomes]
    assert not any(pending(c) for c in chains)  # every result is complete
    stage = get_stage("toy")
    for i, d in enumerate(folders):
        assert stage.cached(ToySpec(value=10 + i), d / "eval") == ToyResult(doubled=20 + 2 * i)
        assert int((d / "done").read_text()) == 10
    lost = _starts(tmp_path / removed[0])
    assert lost[0][0] == nodes[1].node_id and len(lost) == 2
    node, first = lost[1]  # the rerun: on the surviving node, from the step the folder held
    assert node == nodes[0].node_id and first >= 2


def _move_when_saved(cluster, node, runs: Path, driver: threading.Thread) -> list:
    """Once a run has saved its state on `node`, add a fresh node and remove `node` (in the main
    thread: Ray starts nodes there); then watch the runs' status for the reruns' start step."""
    deadline, resumed = time.monotonic() + 120, []
    while not any((d / "state" / "midtrain_state").is_dir() for d in runs.glob("*-s0-*")):
        assert time.monotonic() < deadline and driver.is_alive(), "no run saved a state on B"
        time.sleep(0.05)
    cluster.add_node(num_cpus=3, resources={"trainer": 3}, object_store_memory=SMALL)
    cluster.remove_node(node, allow_graceful=False)
    while driver.is_alive() and time.monotonic() < deadline:
        for status in runs.glob("*-s0-*/status.json"):
            s = json.loads(status.read_text() or "{}")
            if s.get("status") == "running" and s.get("from_step", 0) > 0:
                resumed.append((status.parent.name, s["from_step"]))
        time.sleep(0.05)
    return resumed


def test_a_study_finishes_when_its_node_is_replaced_mid_run(tmp_path, monkeypatch):
    """A real (tiny) study: every chain starts on node B; B is replaced by node A once a run has
    saved its state; the runs resume on A from their state and the study's results are complete."""
    ray = pytest.importorskip("ray")
    import tomli_w
    import torch
    from _train_fixtures import build_world, pretrain_config
    from ray.cluster_utils import Cluster

    from midtrain import train
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    torch.set_num_threads(1)
    w = build_world(tmp_path / "world")
    train.run(pretrain_config(w, checkpoint_every=0), tmp_path / "base", progress=False)
    study = {
        "name": "cluster", "checkpoint": str(tmp_path / "base" / "final"), "stores": w["stores"],
        "base": {"web": 1.0}, "base_max_repetition": 50.0, "seeds": [0], "fractions": [0.5],
        "candidates": [{"name": "math", "mix": {"math": 1.0}, "max_repetition": 50.0}],
        "tokens": 300 * 128, "seq_len": 32, "batch_tokens": 128, "micro_batch": 4,
        "train": {"threads": 1, "checkpoint_every": 10},
        "resources": {"cpus": 1, "custom": {"trainer": 1}},
    }  # fmt: skip
    (tmp_path / "study.toml").write_text(tomli_w.dumps(study))
    path = os.pathsep.join([str(TESTS), str(SRC), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # every run waits 8 s at step 20, after its step-10 state: node B goes while they wait
    monkeypatch.setenv("MIDTRAIN_TEST_PAUSE", "step:20:8")
    head = {"num_cpus": 0, "object_store_memory": SMALL, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    node_b = cluster.add_node(num_cpus=3, resources={"trainer": 3}, object_store_memory=SMALL)
    cluster.wait_for_nodes()
    out, done = tmp_path / "s", []
    ray.init(address=cluster.address, log_to_driver=False)  # the executor uses this connection

    def drive() -> None:
        done.append(run_study(load_study(tmp_path / "study.toml"), out, executor="ray"))

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        resumed = _move_when_saved(cluster, node_b, out / "runs", driver)
        driver.join(timeout=120)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert resumed, "no run resumed from its state on the new node"
    assert all(step % 10 == 0 and 0 < step < 300 for _, step in resumed)  # from a saved state
    (results,) = done
    runs = results.control.runs + results.arms[0].runs
    assert [r.status for r in runs] == ["done", "done"]
    for run_dir in (out / "runs").glob("*-s0-*"):
        steps = [json.loads(x)["step"] for x in (run_dir / "log.jsonl").read_text().splitlines()]
        assert steps == list(range(1, 301))  # resumed: the lines after the state were rewritten
    assert (out / "results.json").is_file() and (out / "report.md").is_file()
