"""`midtrain sft` on CUDA (bf16 autocast): the grid runs, the chosen LR lowers the validation
loss as it does on CPU, and the checkpoint's own validation loss (fp32 on both) matches CPU's
within 1e-4 relative, the fine-tuned one within 5e-2 (bf16 training vs fp32; 2e-3 measured
between the two precisions on CPU)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import tomli_w
from _gpu_fixtures import env

from midtrain.io import read_json
from midtrain.sft import run_sft

pytestmark = pytest.mark.gpu

FIELDS = {"seq_len": 32, "batch_size": 8, "micro_batch": 4, "epochs": 2, "checkpoint_every": 0}
LRS = [1e-3, 1e-2]


def sums(path: Path, n: int, seed: int) -> Path:
    rng, rows = random.Random(seed), []
    for _ in range(n):
        a, b = rng.randint(0, 9), rng.randint(0, 9)
        rows.append({"prompt": f"{a} plus {b}", "response": f"{a + b}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_sft_on_cuda_lowers_the_validation_loss_like_on_cpu(world, tmp_path):
    data, val = sums(tmp_path / "train.jsonl", 100, 0), sums(tmp_path / "val.jsonl", 24, 1)
    cpu = run_sft({**FIELDS, "checkpoint": world["init"], "data": str(data), "val": str(val),
                   "lrs": LRS, "device": "cpu", "precision": "fp32", "threads": 1},
                  tmp_path / "cpu", progress=False)  # fmt: skip
    config = tmp_path / "sft.toml"
    config.write_text(tomli_w.dumps({**FIELDS, "device": "cuda", "precision": "bf16"}))
    out = tmp_path / "cuda"
    cmd = [sys.executable, "-m", "midtrain.cli", "sft", world["init"], "--data", str(data),
           "--val", str(val), "--out", str(out), "--config", str(config),
           *(a for lr in LRS for a in ("--lr", str(lr)))]  # fmt: skip
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    resolved = read_json(out / "config.json")["resolved"]
    assert (resolved["device"], resolved["precision"]) == ("cuda", "bf16")
    got = read_json(out / "sft.json")
    assert all(g["status"] == "done" for g in got["grid"]) and len(got["grid"]) == 2
    assert got["val_before"]["loss"] == pytest.approx(cpu.val_before.loss, rel=1e-4)
    assert got["val_loss"] < got["val_before"]["loss"] - 2.0  # 5.67 -> 1.67 on CPU
    assert got["chosen_lr"] == cpu.chosen_lr
    assert got["val_loss"] == pytest.approx(cpu.val_loss, rel=5e-2)
