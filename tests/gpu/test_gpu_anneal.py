"""An anneal on CUDA with the CUDA defaults spelled out (bf16 autocast, torch.compile): it runs,
records what it resolved, compiles a graph, lowers the loss, writes fp32 weights, and its losses
follow the same run on CPU in fp32 within bf16's tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _gpu_fixtures import weights
from _train_fixtures import run_config

from midtrain import train
from midtrain.io import read_json
from midtrain.train.log import read_log

pytestmark = pytest.mark.gpu

FIRST_LOSS_RTOL = 1e-2  # step 1: same weights, same batch; bf16 matmuls vs fp32
LOSS_RTOL = 5e-2  # steps 2-8: the two trajectories drift apart by bf16's rounding


def test_an_anneal_on_cuda_in_bf16_with_compile_follows_the_cpu_run(world, tmp_path):
    from torch._dynamo.utils import counters

    rc = run_config(world, init=world["init"], schedule={"name": "cosine", "start_lr": 3e-3})
    ref = train.run({**rc, "device": "cpu", "precision": "fp32", "compile": False},
                    tmp_path / "cpu", progress=False)  # fmt: skip
    counters.clear()
    res = train.run({**rc, "device": "cuda", "precision": "bf16", "compile": True},
                    tmp_path / "cuda", progress=False)  # fmt: skip
    assert counters["stats"]["unique_graphs"] >= 1  # the loss went through torch.compile

    resolved = read_json(tmp_path / "cuda" / "config.json")["resolved"]
    assert (resolved["device"], resolved["precision"], resolved["compile"]) == (
        "cuda",
        "bf16",
        True,
    )
    assert res.steps == ref.steps == 8 and res.final_loss < res.first_loss
    cuda_log = read_log(tmp_path / "cuda" / "log.jsonl")
    cpu_log = read_log(tmp_path / "cpu" / "log.jsonl")
    assert [r["step"] for r in cuda_log] == list(range(1, 9))  # flushed at checkpoints and the end
    assert [r["lr"] for r in cuda_log] == [r["lr"] for r in cpu_log]
    assert cuda_log[0]["loss"] == pytest.approx(cpu_log[0]["loss"], rel=FIRST_LOSS_RTOL)
    for a, b in zip(cuda_log, cpu_log, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=LOSS_RTOL), a["step"]

    w, start = weights(tmp_path / "cuda" / "final"), weights(Path(world["init"]))
    assert w.keys() == start.keys()
    assert all(t.dtype == torch.float32 for t in w.values())  # master weights stay fp32
    assert all(not torch.equal(w[k], start[k]) for k in start)  # every tensor trained
