"""The scripts in scripts/ run: the world learnability check on a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_check_world_learnable_runs_and_writes_its_curve(tmp_path):
    out = tmp_path / "curve.json"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "check_world_learnable.py"),
        "--world", str(tmp_path / "world"), "--scale", "0.05", "--tokens", "8192",
        "--eval-every", "4096", "--limit", "8", "--out", str(out),
    ]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [row["tokens"] for row in res["curve"]] == [0, 4096, 8192]
    for task, acc in res["lm_eval_acc"].items():
        assert 0.0 <= acc <= 1.0 and task in res["curve"][-1]


@pytest.mark.slow
def test_profile_train_step_groups_the_step_and_bounds_its_speed():
    cmd = [sys.executable, str(ROOT / "scripts" / "profile_train_step.py"), "--json",
           "--steps", "1", "--warmup", "1", "--threads", "1"]  # fmt: skip
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout)
    shares = res["shares"]
    assert abs(sum(shares.values()) - 1) < 0.01
    assert shares["matmul"] > 0.2 and shares["attention"] > 0.02 and shares["optimizer"] > 0
    assert 0 < res["matmul_efficiency"] <= 1.2 and res["ceiling"] > 0
    floor = res["matmul_floor_s"] + res["attention_s"]
    assert abs(res["ceiling"] - res["step_s"] / floor) < 0.01 * res["ceiling"]
