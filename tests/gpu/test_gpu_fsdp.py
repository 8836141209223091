"""FSDP2 on one rank over nccl (torchrun, one process): `train.distributed.parallelize` shards
the model onto the GPU, it trains like the plain model (same bf16 steps: weights within 1e-5,
losses within 1e-4 relative: one rank's all-gather and reduce-scatter only copy), and its DCP
state round-trips exactly. The worker is `_fsdp_one_rank.py`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _gpu_fixtures import env

pytestmark = pytest.mark.gpu

HERE = Path(__file__).resolve().parent


def test_fsdp2_on_one_rank_over_nccl_trains_like_the_plain_model(world, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
           str(HERE / "_fsdp_one_rank.py"), world["init"], str(tmp_path)]  # fmt: skip
    res = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    r = json.loads((tmp_path / "result.json").read_text())
    assert (r["backend"], r["world"]) == ("nccl", 1)
    assert r["sharded"] and r["on_cuda"] and r["same_keys"]
    assert r["max_abs_diff_vs_plain"] <= 1e-5, r
    assert r["max_loss_rel_diff"] <= 1e-4, r
    assert r["losses"][-1] < r["losses"][0]  # it trained (4 steps on one batch)
    assert r["dcp_weights_equal"] and r["dcp_moments_equal"] and r["moments"] > 0
