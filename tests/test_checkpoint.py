"""Exact resume: SIGKILL the CLI at several points (incl. mid checkpoint write), resume, and end
with the same bytes as an uninterrupted run. Plus the atomic checkpoint folder's recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _train_fixtures import build_world, run_config, save_tiny_model

from midtrain import io, train
from midtrain.io import read_json
from midtrain.train import checkpoint


def _toml(rc: dict) -> str:
    """The run config as TOML (the tiny subset the fixtures use)."""

    def val(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        return json.dumps(v)

    return "".join(f"{k} = {val(v)}\n" for k, v in rc.items())


def cli(config: Path, out: Path, kill_at: str | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env.pop(io.KILL_ENV, None)
    if kill_at:
        env[io.KILL_ENV] = kill_at
    cmd = [
        sys.executable,
        "-m",
        "midtrain.cli",
        "anneal",
        "--config",
        str(config),
        "--out",
        str(out),
    ]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


@pytest.mark.slow
def test_sigkill_anywhere_then_resume_is_bit_identical(tmp_path):
    torch.set_num_threads(1)
    world = build_world(tmp_path)
    # GPT-2 has dropout: the RNG state must be restored too, not only weights and moments.
    init = save_tiny_model(tmp_path, "gpt2", world["tokenizer"])
    rc = run_config(world, init=str(init), schedule={"name": "cosine", "start_lr": 3e-3})
    ref = train.run(rc, tmp_path / "reference", progress=False)

    config = tmp_path / "run.toml"
    config.write_text(_toml(rc))
    out = tmp_path / "killed"
    # (kill point, step the killed process resumed from): after a step; mid state write
    # (weights written, optimizer not); between the two renames of the state swap; mid final write.
    for kill_at, from_step in [
        ("step:3", 0),
        ("save:state:4", 2),
        ("swap:state:6", 2),
        ("save:final:8", 4),
    ]:
        res = cli(config, out, kill_at)
        assert res.returncode == -signal.SIGKILL, (kill_at, res.stderr[-2000:])
        status = read_json(out / "status.json")
        assert status["status"] == "running" and status["from_step"] == from_step, kill_at
        if kill_at.startswith("swap"):  # no state/ at all: only .state.old is complete
            assert not (out / "state").exists() and (out / ".state.old").is_dir()
    res = cli(config, out, None)
    assert res.returncode == 0, res.stderr[-2000:]
    assert read_json(out / "status.json")["status"] == "done"

    a, b = tensors(tmp_path / "reference" / "final"), tensors(out / "final")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    ref_log = [
        json.loads(x) for x in (tmp_path / "reference" / "log.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in log] == list(range(1, 9))  # each step once, despite the re-runs
    assert [(r["loss"], r["grad_norm"], r["lr"]) for r in log] == [
        (r["loss"], r["grad_norm"], r["lr"]) for r in ref_log
    ]
    metrics = read_json(out / "metrics.json")
    assert metrics["final_loss"] == ref.final_loss
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_recover_dir_keeps_the_last_complete_checkpoint(tmp_path):
    final = tmp_path / "state"
    tmp, old = tmp_path / ".state.k1x9.tmp", tmp_path / ".state.old"
    old.mkdir()
    (old / "weights").write_text("step 4")
    tmp.mkdir()
    (tmp / "weights").write_text("step 6, maybe partial")
    io.recover_dir(final)  # killed between the renames: the old folder comes back
    assert (final / "weights").read_text() == "step 4"
    assert not tmp.exists() and not old.exists()

    with pytest.raises(RuntimeError), io.atomic_dir(final, fsync=True) as d:
        (d / "weights").write_text("half")
        raise RuntimeError("killed")
    assert (final / "weights").read_text() == "step 4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state"]

    with io.atomic_dir(final, fsync=True) as d:
        (d / "weights").write_text("step 8")
    assert (final / "weights").read_text() == "step 8" and not old.exists()


def test_trainer_state_is_read_and_validated(tmp_path):
    from midtrain.errors import MidtrainError

    assert checkpoint.read_trainer_state(tmp_path) is None
    (tmp_path / "midtrain_state").mkdir()
    (tmp_path / "midtrain_state" / "trainer.json").write_text("{not json")
    with pytest.raises(MidtrainError, match="corrupt"):
        checkpoint.read_trainer_state(tmp_path)
    with pytest.raises(MidtrainError, match="not a HF model folder"):
        checkpoint.check_hf_folder(tmp_path)
