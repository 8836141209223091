"""`midtrain demo --quick` end to end through the real CLI, from a cold cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end(tmp_path):
    out, cache = tmp_path / "demo", tmp_path / "cache"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", MIDTRAIN_CACHE=str(cache))
    proc = subprocess.run(
        [sys.executable, "-m", "midtrain.cli", "demo", "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((out / "study" / "results.json").read_text())
    arms = {a["name"] for a in results["arms"]}
    assert arms == {"math", "code", "hq", "flan", "hq+flan"}
    assert results["control"]["seeds"] == [0, 1]
    for arm in results["arms"]:
        assert arm["verdict"] in {"include", "reject", "inconclusive"}
        assert arm["seeds"] == [0, 1]
        assert set(arm["tasks"]) >= {"world_facts", "world_arith", "world_code"}
        assert arm["primary"]["ci"][0] <= arm["primary"]["delta"] <= arm["primary"]["ci"][1]
    hqflan = next(a for a in results["arms"] if a["name"] == "hq+flan")
    ratios = {m["source"]: m["ratio"] for m in hqflan["mix"]}
    assert ratios == pytest.approx({"web": 0.7, "hq": 0.15, "flan": 0.15})
    assert "verdict" in proc.stdout or "include" in proc.stdout or "inconclusive" in proc.stdout
    for f in ("report.md", "report.html", "plots/deltas.png"):
        assert (out / "study" / f).is_file()
    # The base is cached: a second demo reuses it and every finished run.
    again = subprocess.run(
        [sys.executable, "-m", "midtrain.cli", "demo", "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "cached" in again.stderr
    assert "0 to run" in again.stderr or "already done" in again.stderr
