"""Runs end to end on tiny models: pretrain -> anneal, warm starts, errors, NaN, accumulation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _train_fixtures import (
    build_world,
    other_tokenizer,
    pretrain_config,
    run_config,
    save_tiny_model,
)

from midtrain import train
from midtrain.errors import MidtrainError
from midtrain.io import read_json
from midtrain.train.optim import lm_loss

LOG_KEYS = ["step", "tokens", "lr", "loss", "grad_norm", "tok_s"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("train")
    w = build_world(root)
    w["base_dir"] = root / "base"
    w["base_rc"] = pretrain_config(w, checkpoint_every=3)
    w["base_metrics"] = train.run(w["base_rc"], w["base_dir"], progress=False)
    return w


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def mix_loss(model_dir: Path, rc: dict, n: int = 16) -> float:
    """Mean next-token loss of `model_dir` on the first `n` sequences of rc's mix."""
    from transformers import AutoModelForCausalLM

    ids = torch.from_numpy(train.plan_run(train.load_run_config(rc)).sampler.sequences(0, n))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    with torch.no_grad():
        return float(lm_loss(model, ids)) / (ids.numel() - n)


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def test_pretrain_writes_a_self_describing_run_dir(world):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, m = world["base_dir"], world["base_metrics"]
    assert read_json(out / "status.json")["status"] == "done"
    rows = log_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(list(r) == LOG_KEYS for r in rows)
    assert rows[-1]["tokens"] == m.tokens == 8 * 128
    cfg = read_json(out / "config.json")
    assert cfg["resolved"]["steps"] == 8 and cfg["resolved"]["grad_accumulation"] == 2
    assert cfg["compile"] == "auto" and cfg["resolved"]["compile"] is False  # eager on CPU
    inputs = read_json(out / "inputs.json")
    assert set(inputs["stores"]) == {"web", "math"} and "torch" in inputs["versions"]
    assert inputs["tokenizer"]["hash"] == cfg["resolved"]["tokenizer_hash"]
    assert not (out / "state").exists()  # final/ holds everything state/ held
    final = out / "final"
    model = AutoModelForCausalLM.from_pretrained(final)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert AutoTokenizer.from_pretrained(final).eos_token == "<|endoftext|>"
    state = read_json(final / "midtrain_state" / "trainer.json")
    assert state["lr"] == 1e-2 and state["tokens_seen"] == 1024 and state["steps"] == 8
    assert (final / "midtrain_state" / "optimizer.pt").is_file()
    assert m.final_loss < rows[0]["loss"]
    assert m.final_checkpoint == str(final)


def test_anneal_continues_the_checkpoint_lr_and_lowers_loss_on_its_mix(world, tmp_path):
    base = world["base_dir"] / "final"
    rc = run_config(world, init=str(base), schedule={"name": "linear"}, tokens=12 * 128)
    m = train.run(rc, tmp_path / "anneal", progress=False)
    rows = log_rows(tmp_path / "anneal")
    assert rows[0]["lr"] == 1e-2  # first step at the checkpoint's LR: no jump
    assert rows[-1]["lr"] == pytest.approx(1e-2 / 12)
    assert m.warnings == []
    state = read_json(tmp_path / "anneal" / "final" / "midtrain_state" / "trainer.json")
    assert state["lr"] == 0.0 and state["steps"] == 8 + 12 and state["tokens_seen"] == 20 * 128
    final = Path(m.final_checkpoint)
    assert mix_loss(final, rc) < mix_loss(base, rc) - 0.1


def test_a_start_lr_other_than_the_checkpoints_warns_with_the_jump(world, tmp_path, capsys):
    base = world["base_dir"] / "final"
    rc = run_config(world, init=str(base), schedule={"name": "cosine", "start_lr": 5e-3})
    m = train.run(rc, tmp_path / "jump", progress=False)
    assert log_rows(tmp_path / "jump")[0]["lr"] == 5e-3
    assert len(m.warnings) == 1 and "x0.5 jump" in m.warnings[0]
    assert "warning: first step LR 0.005 differs from the checkpoint's LR 0.01" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize("kind", ["gpt_neox", "gpt2"])
def test_warm_start_from_other_architectures(world, tmp_path, kind):
    from transformers import AutoModelForCausalLM

    init = save_tiny_model(tmp_path, kind, world["tokenizer"])
    rc = run_config(world, init=str(init), tokens=4 * 128, checkpoint_every=0)
    m = train.run(rc, tmp_path / "run", progress=False)
    final = Path(m.final_checkpoint)
    model = AutoModelForCausalLM.from_pretrained(final)
    assert model.config.model_type == kind
    before, after = weights(init), weights(final)
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert read_json(final / "midtrain_state" / "trainer.json")["tokens_seen"] == 512


def test_gradient_accumulation_equals_one_big_batch(world, tmp_path):
    base = str(world["base_dir"] / "final")
    common = {"init": base, "tokens": 3 * 128, "checkpoint_every": 0}
    one = train.run(run_config(world, micro_batch=4, **common), tmp_path / "one", progress=False)
    acc = train.run(run_config(world, micro_batch=1, **common), tmp_path / "acc", progress=False)
    a, b = log_rows(tmp_path / "one"), log_rows(tmp_path / "acc")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], rel=1e-5)
    wa, wb = weights(Path(one.final_checkpoint)), weights(Path(acc.final_checkpoint))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_non_finite_loss_fails_the_run_with_the_last_good_step(world, tmp_path):
    rc = pretrain_config(world, schedule={"name": "constant", "start_lr": 1e20})
    with pytest.raises(train.Diverged, match="non-finite") as e:
        train.run(rc, tmp_path / "nan", progress=False)
    assert e.value.exit_code == 3
    status = read_json(tmp_path / "nan" / "status.json")
    assert status["status"] == "failed" and status["step"] == 2
    assert status["last_good"]["step"] == 1 and status["last_good"]["loss"] > 0
    assert log_rows(tmp_path / "nan")[-1]["loss"] is None  # NaN logged as null (strict JSON)
    assert not (tmp_path / "nan" / "final").exists()


def test_a_finished_run_returns_its_metrics_and_refuses_another_config(world):
    again = train.run(world["base_rc"], world["base_dir"], progress=False)
    assert again == world["base_metrics"]
    with pytest.raises(MidtrainError, match="another config"):
        train.run({**world["base_rc"], "seed": 1}, world["base_dir"], progress=False)


def _bad(world, tmp_path, case):
    base = str(world["base_dir"] / "final")
    bare = save_tiny_model(tmp_path, "llama", world["tokenizer"])
    if case == "other-tokenizer":
        other = tmp_path / "other"
        return run_config(
            world, init=str(save_tiny_model(other, "llama", str(other_tokenizer(other))))
        )
    return {
        "no-start-lr": run_config(world, init=str(bare), schedule={"name": "linear"}),
        "init-and-model": pretrain_config(world, init=base),
        "neither": run_config(world),
        "unknown-schedule": run_config(world, init=base, schedule={"name": "wsd"}),
        "tiny-budget": run_config(world, init=base, tokens=100),
        "exp-to-zero": run_config(world, init=base, schedule={"name": "exp", "final_lr": 0.0}),
        "unknown-field": run_config(world, init=base, learning_rate=1e-3),
        "unknown-source": run_config(world, init=base, mix=[{"source": "code", "ratio": 1.0}]),
        "seq-too-long": run_config(world, init=base, seq_len=128, batch_tokens=256),
    }[case]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-start-lr", "schedule.start_lr: .* has no midtrain_state/trainer.json"),
        ("init-and-model", "init / \\[model\\]: give exactly one"),
        ("neither", "init / \\[model\\]: give exactly one"),
        ("unknown-schedule", "schedule.name: unknown schedule 'wsd'"),
        ("tiny-budget", "tokens: 100 is less than one optimizer step"),
        ("exp-to-zero", "schedule.final_lr: 'exp'"),
        ("unknown-field", "run config: learning_rate: is not a known field"),
        ("unknown-source", "mix\\[0\\].source: unknown source 'code'"),
        ("seq-too-long", "seq_len: 128 is longer than the model's max_position_embeddings 64"),
        ("other-tokenizer", "stores.web: tokenised with tokenizer .* re-prepare the store"),
    ],
)
def test_bad_configs_fail_in_one_line_before_anything_is_written(world, tmp_path, case, message):
    rc = _bad(world, tmp_path, case)
    out = tmp_path / "out"
    with pytest.raises(MidtrainError, match=message) as e:
        train.run(rc, out, progress=False)
    assert "\n" not in str(e.value)
    assert not out.exists()


def test_dry_run_and_toml_paths_relative_to_the_file(world, tmp_path):
    from typer.testing import CliRunner

    from midtrain.cli import app

    root = world["root"]
    toml = root / "anneal.toml"
    toml.write_text(
        'init = "base/final"\ntokens = 1024\nseq_len = 32\nbatch_tokens = 128\nmicro_batch = 2\n'
        'stores = { web = "stores/web", math = "stores/math" }\n'
        'mix = [{ source = "web", ratio = 0.7, max_repetition = 9 }, '
        '{ source = "math", ratio = 0.3, max_repetition = 9 }]\n'
        '[schedule]\nname = "1-sqrt"\nfinal_lr_fraction = 0.1\n'
    )
    cfg = train.load_run_config(toml)
    assert cfg.init == str(world["base_dir"] / "final")
    plan = train.plan_run(cfg)
    est = train.estimate(plan)
    assert est.steps == 8 and est.flops > 0 and est.seconds > 0
    assert plan.resolved()["resolved"]["schedule"]["final_lr"] == pytest.approx(1e-3)
    assert plan.resolved()["resolved"]["start_lr_source"] == "checkpoint"
    assert [r.source for r in plan.sampler.plan()] == ["web", "math"]
    out = tmp_path / "dry"
    res = CliRunner().invoke(app, ["anneal", "--config", str(toml), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "FLOPs" in res.output and "web" in res.output
    assert not out.exists()


def test_pretrain_command_requires_a_fresh_model_and_the_constant_schedule(world):
    with pytest.raises(MidtrainError, match="pretrain trains a fresh"):
        train.pretrain_config(train.load_run_config(run_config(world, init="x")))
    rc = pretrain_config(world, schedule={"name": "cosine", "start_lr": 1e-3})
    with pytest.raises(MidtrainError, match="pretrain uses 'constant'"):
        train.pretrain_config(train.load_run_config(rc))
    rc = pretrain_config(world, schedule={"start_lr": 1e-3})
    assert train.pretrain_config(train.load_run_config(rc)).schedule.name == "constant"
