"""Trackers: W&B and TensorBoard as sinks of the run log — every logged step, rank 0 only, closed
at the end, off by default, not part of a run's identity; a missing package is a one-line error
before anything is written. W&B is faked (a module that records its calls); TensorBoard is real
when installed."""

from __future__ import annotations

import importlib.machinery
import json
import sys
import types
from pathlib import Path

import pytest
import tomli_w
import torch
from _train_fixtures import build_world, pretrain_config

from midtrain import cli, train
from midtrain.errors import MidtrainError
from midtrain.study import runner
from midtrain.study.config import parse_study
from midtrain.train.trackers import TrackersConfig, close_sinks, open_sinks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return build_world(tmp_path_factory.mktemp("trackers"))


@pytest.fixture
def wandb_calls(monkeypatch):
    """A fake `wandb` module recording init kwargs, logged (step, data) and finish calls."""
    calls: dict = {"init": [], "log": [], "finish": 0}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self):
            calls["finish"] += 1

    def init(**kwargs):
        calls["init"].append(kwargs)
        return Run()

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)  # libraries probe find_spec
    fake.init = init
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    return calls


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def test_wandb_gets_every_logged_step_offline_and_is_finished(world, tmp_path, wandb_calls):
    out = tmp_path / "run"
    rc = pretrain_config(world, trackers={"use": ["wandb"], "project": "p"})
    train.run(rc, out, progress=False)
    rows = log_rows(out)
    expected = [(r["step"], {f"train/{k}": v for k, v in r.items() if k != "step"}) for r in rows]
    assert wandb_calls["log"] == expected and len(rows) == 8
    (init,) = wandb_calls["init"]
    assert (init["mode"], init["project"], init["name"], init["dir"]) == (
        "offline", "p", "run", str(out)
    )  # fmt: skip
    assert init["resume"] == "allow" and init["config"]["tokens"] == rc["tokens"]
    assert wandb_calls["finish"] == 1
    # trackers are not part of the run's identity: the same run without them is the finished run
    assert train.run(pretrain_config(world), out, progress=False).steps == 8
    train.run(pretrain_config(world), tmp_path / "plain", progress=False)  # off by default
    assert len(wandb_calls["init"]) == 1 and not (tmp_path / "plain" / "tb").exists()


def test_wandb_mode_from_the_environment_and_no_sinks_off_rank0(tmp_path, wandb_calls, monkeypatch):
    cfg = TrackersConfig.model_validate(["wandb"])  # the list shorthand
    monkeypatch.setenv("WANDB_MODE", "online")
    close_sinks(open_sinks(cfg, tmp_path / "a", {}))
    assert wandb_calls["init"][0]["mode"] is None and wandb_calls["finish"] == 1
    monkeypatch.setenv("RANK", "1")
    assert open_sinks(cfg, tmp_path / "b", {}) == [] and len(wandb_calls["init"]) == 1


def test_tensorboard_scalars_match_the_log(world, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train.run(pretrain_config(world, trackers=["tensorboard"]), out, progress=False)
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    rows = log_rows(out)
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in loss] == [r["step"] for r in rows]
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert {"train/lr", "train/grad_norm", "train/tokens"} <= set(events.Tags()["scalars"])


def test_a_missing_tracker_package_is_one_line_before_anything_is_written(
    world, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = tmp_path / "run.toml"
    config.write_text(tomli_w.dumps(pretrain_config(world, trackers=["wandb"])))
    argv = ["midtrain", "pretrain", "--config", str(config), "--out", str(tmp_path / "o")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    assert "error: trackers: wandb is not installed; pip install 'midtrain[wandb]'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()
    study = {"checkpoint": "ckpt", "stores": {"web": "w", "math": "m"}, "base": {"web": 1.0},
             "candidates": [{"name": "math", "mix": {"math": 1.0}}], "tokens": 8192}  # fmt: skip
    cfg = parse_study({**study, "train": {"trackers": ["tensorboard", "wandb"]}})
    with pytest.raises(MidtrainError) as e:
        runner.prepare(cfg, tmp_path / "study")
    assert str(e.value) == "train.trackers: wandb is not installed; pip install 'midtrain[wandb]'"
    cfg = parse_study({**study, "train": {"trackers": ["mlflow"]}})
    with pytest.raises(MidtrainError, match=r"^train.trackers.use\[0\]: Input should be 'wandb'"):
        runner.prepare(cfg, tmp_path / "study")


def test_trackers_do_not_change_a_study_runs_identity(world):
    from midtrain.study.plan import _run_id

    rc = {"init": world["tokenizer"], "stores": world["stores"], "tokens": 128}
    assert _run_id(rc) == _run_id({**rc, "trackers": ["wandb"]})
    assert _run_id(rc) != _run_id({**rc, "tokens": 256})


def test_a_resumed_tensorboard_log_drops_the_steps_after_its_state(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = TrackersConfig(use=["tensorboard"])
    for start, value in [(0, 1.0), (3, 2.0)]:  # killed after step 5, resumed from state at 3
        (sink,) = open_sinks(cfg, tmp_path, {}, start_step=start)
        for step in range(start + 1, 6):
            sink.log({"step": step, "loss": value}, step)
        close_sinks([sink])
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert loss == [(1, 1.0), (2, 1.0), (3, 1.0), (4, 2.0), (5, 2.0)]
