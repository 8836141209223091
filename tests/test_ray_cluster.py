"""Ray at cluster scale, simulated: two worker nodes offering a custom resource, a head that runs
nothing, one worker node removed mid-study. Its chains are rerun by Ray on the other node and
resume from their folders (the shared storage); every chain finishes with its result cached."""

from __future__ import annotations

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
