"""`midtrain sft` on two processes (CPU, gloo): DDP and FSDP2 fine-tunes match the single-process
probe, with steps whose examples do not split evenly over the ranks (a rank tops up with an
untrained micro batch); a DDP job SIGKILLed in the middle of a save resumes bit-identical."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch
from _train_fixtures import save_tiny_model, sentences
from test_distributed import RTOL, launch, wait, weights
from test_sft import sums, write_rows

from midtrain.io import read_json
from midtrain.sft import run_sft
from midtrain.sft.run import rank_share
from midtrain.train.distributed import Dist

LR = "lr-0.003"
# 41 rows in steps of 5 examples, micro batches of 2: every step is ragged over 2 ranks (3 + 2
# examples: 2 micro batches + 1 and a filler), the last step has 1 example (rank 1: filler only)
FIELDS = {"seq_len": 32, "batch_size": 5, "micro_batch": 2, "threads": 1, "epochs": 1,
          "lrs": [3e-3], "warmup_fraction": 0.1, "checkpoint_every": 3}  # fmt: skip


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    from midtrain.data.tokenizer import train_tokenizer

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sftdist")
    train_tokenizer(sentences(300, 0) + sentences(300, 1, numbers=True), 300, root / "tok")
    fields = {**FIELDS, "checkpoint": str(save_tiny_model(root, "llama", str(root / "tok"))),
              "data": str(write_rows(root / "train.jsonl", sums(41, 0))),
              "val": str(write_rows(root / "val.jsonl", sums(12, 1)))}  # fmt: skip
    run_sft(fields, root / "single", progress=False)
    return {"root": root, "fields": fields, "ref": root / "single", "jobs": {}}


def config(w: dict, name: str, **overrides) -> Path:
    f = w["root"] / f"{name}.toml"
    f.write_text(tomli_w.dumps({**w["fields"], **overrides}))
    return f


def job(w: dict, mode: str) -> Path:
    """The uninterrupted 2-process probe of a mode."""
    if mode not in w["jobs"]:
        out = w["root"] / mode
        codes, err = wait(
            launch(config(w, mode, parallel=mode), out, argv=("sft", w["fields"]["checkpoint"]))
        )
        assert codes == [0, 0], err[-3000:]
        w["jobs"][mode] = out
    return w["jobs"][mode]


def losses(out: Path) -> list[float]:
    rows = (out / LR / "log.jsonl").read_text().splitlines()
    return [json.loads(r)["loss"] for r in rows]


def test_a_ragged_step_is_dealt_out_with_fillers_and_loses_no_example():
    from midtrain.sft.data import Example

    ex = [Example(np.arange(n), np.ones(n, bool), 1) for n in (5, 3, 9, 4, 7)]
    shares = [rank_share(ex, 2, Dist("ddp", r, 2)) for r in (0, 1)]
    assert [len(s) for s in shares] == [2, 2]  # as many micro batches on every rank
    trained = [[len(e.ids) for e in b] for s in shares for b, t in s if t]
    assert sorted(n for b in trained for n in b) == [3, 4, 5, 7, 9]  # every example once
    assert [t for s in shares for _, t in s] == [True, True, True, False]
    assert rank_share(ex[:1], 2, Dist("fsdp", 1, 2)) == [([ex[0]], False)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_fine_tune_like_one(w, mode):
    out, ref = job(w, mode), w["ref"]
    la, lb = losses(ref), losses(out)
    assert len(la) == len(lb) == 9
    assert max(abs(a - b) / abs(a) for a, b in zip(la, lb, strict=True)) < RTOL
    wa, wb = weights(ref / LR / "final"), weights(out / LR / "final")
    dw = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    print(f"\n{mode} vs 1 process: max |dw| {dw:.3g}")
    for k in wa:  # other micro batches (padding, summation order); AdamW's 3e-3 steps on them
        torch.testing.assert_close(wb[k], wa[k], rtol=RTOL, atol=1e-5)
    a, b = read_json(ref / "sft.json"), read_json(out / "sft.json")
    assert b["val_loss"] == pytest.approx(a["val_loss"], rel=RTOL)
    assert b["val_before"] == a["val_before"]
    cfg = read_json(out / LR / "config.json")["resolved"]
    assert (cfg["parallel"], cfg["world_size"]) == (mode, 2)
    assert sorted(p.name for p in (out / LR).iterdir()) == sorted(
        p.name for p in (ref / LR).iterdir()
    )


@pytest.mark.slow
def test_a_job_killed_while_saving_resumes_to_the_uninterrupted_jobs_weights(w):
    ref, out = job(w, "ddp"), w["root"] / "killed"
    cfg, argv = config(w, "killed", parallel="ddp"), ("sft", w["fields"]["checkpoint"])
    codes, err = wait(launch(cfg, out, argv=argv, MIDTRAIN_TEST_KILL="save:state:6"))
    assert codes == [-signal.SIGKILL] * 2, err[-3000:]
    state = json.loads((out / LR / "state" / "midtrain_state" / "trainer.json").read_text())
    assert state["run"]["step"] == 3  # the step-6 save died half-written; step 3's is in place
    codes, err = wait(launch(cfg, out, argv=argv))
    assert codes == [0, 0], err[-3000:]
    assert read_json(out / LR / "status.json")["status"] == "done"
    a, b = weights(ref / LR / "final"), weights(out / LR / "final")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert losses(out) == losses(ref)
    assert read_json(out / "sft.json")["val_loss"] == read_json(ref / "sft.json")["val_loss"]


@pytest.mark.slow
def test_a_single_process_state_is_not_resumed_by_two_processes_and_nothing_is_written(w):
    import subprocess
    import sys

    from test_distributed import _env

    out, cfg = w["root"] / "one-then-two", config(w, "one-then-two")
    cmd = [sys.executable, "-m", "midtrain.cli", "sft", w["fields"]["checkpoint"], "--config",
           str(cfg), "--out", str(out)]  # fmt: skip
    res = subprocess.run(
        cmd, env=_env(MIDTRAIN_TEST_KILL="step:4"), capture_output=True, timeout=120
    )
    assert res.returncode == -signal.SIGKILL
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    codes, err = wait(launch(cfg, out, argv=("sft", w["fields"]["checkpoint"])))
    assert codes == [2, 2], err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --out state: written by 1 process(es)")
    assert "but resumed by 2 ('ddp'); resume with one process (no torchrun)" in lines[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    assert (out / LR / "state").is_dir()


@pytest.mark.slow
def test_a_chain_on_two_processes_runs_its_probe_as_a_two_rank_job(w, monkeypatch):
    """The sft stage under a study's `[resources] processes = 2` (train/launch.py); bad input on
    the ranks comes back as the one-line error of one process."""
    from midtrain.errors import MidtrainError
    from midtrain.jobs import get_stage
    from midtrain.sft.config import SftConfig
    from midtrain.train import launch

    monkeypatch.setenv(launch.PROCESSES_ENV, "2")
    out = w["root"] / "stage"
    res = get_stage("sft").run(SftConfig(**w["fields"]), out)
    assert read_json(out / LR / "config.json")["resolved"]["world_size"] == 2
    assert res.val_loss == pytest.approx(read_json(w["ref"] / "sft.json")["val_loss"], rel=RTOL)
    bad = {**w["fields"], "lrs": [1e-3, 1e-3]}
    with pytest.raises(MidtrainError, match=r"^lrs: \[0.001, 0.001\] must be distinct"):
        launch.run_ranks(["sft", w["fields"]["checkpoint"]], bad, w["root"] / "bad", 2)
    assert not (w["root"] / "bad").exists()
