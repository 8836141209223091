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
    arms = {a["arm"] for a in results["arms"]}
    assert arms == {"math@0.3", "code@0.3", "hq@0.3", "flan@0.3", "hq+flan@0.3", "math@cpt"}
    assert results["control"]["seeds"] == [0, 1]
    rows = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if "│" in line}
    for arm in results["arms"]:
        assert arm["seeds"] == [0, 1]
        assert arm["verdict"] in rows[arm["arm"]], (arm["arm"], rows)  # the table shows the verdict
        assert f"{arm['primary']['delta']:+.3f}" in rows[arm["arm"]]
        assert set(arm["tasks"]) >= {"world_facts", "world_arith", "world_code"}
        assert arm["primary"]["ci"][0] <= arm["primary"]["delta"] <= arm["primary"]["ci"][1]
    # math also has a continued-pretraining arm, and every run got the SFT probe (after the anneals)
    cpt = next(a for a in results["arms"] if a["arm"] == "math@cpt")
    assert cpt["cpt"] and [(m["source"], m["ratio"]) for m in cpt["mix"]] == [("math", 1.0)]
    assert results["probe"]["sets"] == ["arith"] and len(results["probe"]["control"]["arith"]) == 2
    for arm in results["arms"]:
        assert arm["decided_on"] == "base"
        assert [r["status"] for r in arm["probe"]["runs"]] == ["done", "done"]
        assert "arith" in arm["probe"]["sets"]
    hqflan = next(a for a in results["arms"] if a["name"] == "hq+flan")
    ratios = {m["source"]: m["ratio"] for m in hqflan["mix"]}
    assert ratios == pytest.approx({"web": 0.7, "hq": 0.15, "flan": 0.15})
    # clear effects in the quick demo (+0.5 to +0.8 per byte, far beyond seed noise)
    verdicts = {a["arm"]: a["verdict"] for a in results["arms"]}
    assert verdicts["math@0.3"] == verdicts["flan@0.3"] == "include", verdicts
    for f in ("report.md", "report.html", "plots/deltas.png"):
        assert (out / "study" / f).is_file()
    report = (out / "study" / "report.md").read_text()
    assert "## SFT probe" in report and "| math@cpt | arith |" in report
    # one integration round of the winners: web anchor, an ablation, the seeds merged
    rnd = json.loads((out / "rounds" / "round-1" / "round.json").read_text())
    assert rnd["anchor"] == {"web": 1.0} and rnd["anchor_share"] == pytest.approx(0.4)
    assert set(rnd["sources"]) >= {"math", "flan"} and rnd["previous"] == {"web": 1.0}
    assert rnd["primary"] is not None and len(rnd["ablations"]) == 1
    assert rnd["ablations"][0]["contribution"] is not None
    assert rnd["merge"]["status"] == "done" and len(rnd["merge"]["per_seed_delta"]) == 2
    assert "reused control/s0" in proc.stderr  # the round's control is the study's
    assert "round-1" in proc.stdout and "merge of 2 seeds" in proc.stdout
    assert (out / "rounds" / "rounds.md").is_file() and (out / "round-1.toml").is_file()
    # The base is cached: a second demo reuses it and every finished run.
    again = subprocess.run(
        [sys.executable, "-m", "midtrain.cli", "demo", "--quick", "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "base model: cached" in again.stderr
    assert "study demo: 15 jobs, 15 already done" in again.stderr
    assert "study round-1: 7 jobs, 7 already done" in again.stderr
    assert json.loads((out / "study" / "results.json").read_text())["arms"] == results["arms"]
