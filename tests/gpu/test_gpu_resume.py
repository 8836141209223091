"""Kill and resume on CUDA: a run SIGKILLed after a step and in the middle of a state save, then
resumed, ends where the uninterrupted run ends. Its state is exact (steps, LRs, tokens, sampler
position); its numbers are within a stated tolerance, because CUDA kernels (attention's backward,
atomics) are not deterministic by default and bf16 autocast can turn a last-bit difference into
a rounding flip.

Tolerance: per tensor, ||w_resumed - w_ref|| / ||w_ref|| <= 1e-3 and every logged loss within
1e-3 relative. A resume that lost the AdamW moments, the RNG or the data position moves the
weights by about the LR (3e-3) per element per step against weights of about 0.02, i.e. by
1e-1 relative, far outside it."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import tomli_w
from _gpu_fixtures import env, rel_diff, weights
from _train_fixtures import run_config

from midtrain import io, train
from midtrain.io import read_json
from midtrain.train.log import read_log

pytestmark = pytest.mark.gpu

WEIGHT_RTOL = 1e-3
LOSS_RTOL = 1e-3


def anneal(config, out, kill_at: str | None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "midtrain.cli", "anneal", "--config", str(config),
           "--out", str(out)]  # fmt: skip
    extra = {io.KILL_ENV: kill_at} if kill_at else {}
    return subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=300)


def test_sigkill_on_cuda_then_resume_ends_at_the_uninterrupted_run(world, tmp_path):
    # bf16 autocast (CUDA's default), eager: four compilations would cost minutes of the budget;
    # test_gpu_anneal.py compiles.
    rc = run_config(world, init=world["init"], device="cuda", precision="bf16", compile=False,
                    schedule={"name": "cosine", "start_lr": 3e-3})  # fmt: skip
    ref = train.run(rc, tmp_path / "reference", progress=False)
    config, out = tmp_path / "run.toml", tmp_path / "killed"
    config.write_text(tomli_w.dumps(rc))
    for kill_at, from_step in [("step:3", 0), ("save:state:4", 2)]:
        res = anneal(config, out, kill_at)
        assert res.returncode == -signal.SIGKILL, (kill_at, res.stderr[-2000:])
        assert read_json(out / "status.json")["from_step"] == from_step, kill_at
    res = anneal(config, out, None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_json(out / "status.json")["status"] == "done"
    assert read_json(out / "config.json")["resolved"]["device"] == "cuda"

    state = [
        read_json(d / "final" / "midtrain_state" / "trainer.json")
        for d in (tmp_path / "reference", out)
    ]
    for s in state:
        s["run"].pop("wall_s")
    assert state[0] == state[1]  # step, position, tokens, LR: exact
    log, ref_log = read_log(out / "log.jsonl"), read_log(tmp_path / "reference" / "log.jsonl")
    assert [r["step"] for r in log] == list(range(1, 9))  # each step once, despite the re-runs
    assert [r["lr"] for r in log] == [r["lr"] for r in ref_log]
    for a, b in zip(log, ref_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), a["step"]
    diff = rel_diff(weights(tmp_path / "reference" / "final"), weights(out / "final"))
    assert diff <= WEIGHT_RTOL, diff
    assert read_json(out / "metrics.json")["final_loss"] == pytest.approx(ref.final_loss,
                                                                         rel=LOSS_RTOL)  # fmt: skip
