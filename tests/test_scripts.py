"""The scripts in scripts/ run: the world learnability check on a tiny budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
