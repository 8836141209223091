"""Trackers: W&B and TensorBoard as sinks of the run log — every logged step, rank 0 only, closed
at the end (as failed when the run stops on an exception), off by default, not part of a run's
identity; a missing package is a one-line error before anything is written. W&B is the real package
in offline mode (no network, no login), read back with its own transaction-log reader; a fake
module checks only what offline cannot show (WANDB_MODE passed through to an online run).
TensorBoard is real when installed."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import tomli_w
import torch
from _train_fixtures import build_world, pretrain_config

from midtrain import cli, train
from midtrain.driver import runner
from midtrain.errors import MidtrainError
from midtrain.io import hash_obj
from midtrain.study.config import parse_study
from midtrain.train import loop
from midtrain.train.trackers import TrackersConfig, close_sinks, open_sinks


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    return build_world(tmp_path_factory.mktemp("trackers"))


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """The real `wandb`, offline, with every directory it writes inside tmp_path."""
    wandb = pytest.importorskip("wandb")  # a dev extra: `make install` installs it
    home = tmp_path / "wandb-home"
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    yield wandb
    wandb.teardown()  # stops the wandb-core service process this process started


def wandb_records(run_file: Path) -> list[dict]:
    """The records of a `.wandb` transaction log, as `wandb leet inspect --json RUN_FILE` prints
    them: wandb's own reader (in wandb-core, which that command runs; called directly here to
    save a Python start)."""
    from wandb.util import get_core_path

    cmd = [get_core_path(), "leet", "inspect", "--json", "--no-observability",
           "--run-file", str(run_file), str(run_file.parent.parent)]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    return [json.loads(line) for line in res.stdout.splitlines()]


def wandb_run(run_dir: Path) -> dict:
    """One offline W&B run folder read back: run record, history (step, metrics), exit code."""
    (run_file,) = run_dir.glob("run-*.wandb")
    recs = wandb_records(run_file)
    by_type = {r["type"]: r[r["type"]] for r in recs}  # the last of each type
    history = [
        (r["history"]["step"]["num"],
         {k: v for k, v in r["history"]["item"].items() if not k.startswith("_")})
        for r in recs if r["type"] == "history"
    ]  # fmt: skip
    return {"run": by_type["run"], "history": history, "exit": by_type.get("exit")}


def wandb_history_of(rows: list[dict]) -> list[tuple[int, dict]]:
    """What the sink should have logged for these log.jsonl lines."""
    return [(r["step"], {f"train/{k}": v for k, v in r.items() if k != "step"}) for r in rows]


def log_rows(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]


def test_wandb_offline_run_holds_every_logged_step_of_the_log(world, tmp_path, wandb_offline):
    out = tmp_path / "run"
    rc = pretrain_config(world, trackers={"use": ["wandb"], "project": "p"})
    train.run(rc, out, progress=False)
    run_id = hash_obj(str(out))[:16]
    (run_dir,) = (out / "wandb").glob(f"offline-run-*-{run_id}")  # under the run folder
    assert (run_dir / "files").is_dir() and (run_dir / "logs" / "debug.log").is_file()
    assert not list((tmp_path / "wandb-home").rglob("*.wandb"))
    got = wandb_run(run_dir)
    rows = log_rows(out)
    assert len(rows) == 8 and got["history"] == wandb_history_of(rows)  # loss, lr, tokens, ...
    run = got["run"]
    assert (run["project"], run["display_name"], run["run_id"]) == ("p", "run", run_id)
    assert run["config"]["update"]["tokens"] == rc["tokens"]
    assert got["exit"]["exit_code"] == 0  # finished
    # trackers are not part of the run's identity: the same run without them is the finished run
    assert train.run(pretrain_config(world), out, progress=False).steps == 8
    train.run(pretrain_config(world), tmp_path / "plain", progress=False)  # off by default
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    assert not (tmp_path / "plain" / "wandb").exists()


def test_an_interrupted_run_fails_its_wandb_run_and_the_resumed_one_continues_it(
    world, tmp_path, wandb_offline, monkeypatch
):
    def interrupt_in_step_6(point: str, step: int) -> None:
        if (point, step) == ("step", 6):
            raise KeyboardInterrupt  # what SIGINT / SIGTERM raise in the CLI (cli.py)

    out = tmp_path / "run"
    rc = pretrain_config(world, trackers=["wandb"])  # state every 2 steps
    with monkeypatch.context() as m:
        m.setattr(loop, "fault_point", interrupt_in_step_6)
        with pytest.raises(KeyboardInterrupt):
            train.run(rc, out, progress=False)
    before = log_rows(out)  # steps 1..5 logged; the state is at step 4
    train.run(rc, out, progress=False)
    rows = log_rows(out)
    runs = sorted((wandb_run(d) for d in (out / "wandb").glob("offline-run-*")),
                  key=lambda r: r["history"][0][0])  # fmt: skip
    first, resumed = runs  # one offline run per process, both with the run folder's W&B id
    assert first["run"]["run_id"] == resumed["run"]["run_id"] == hash_obj(str(out))[:16]
    assert first["history"] == wandb_history_of(before) and first["exit"]["exit_code"] == 1
    assert [r["step"] for r in before] == [1, 2, 3, 4, 5]
    assert resumed["history"] == wandb_history_of(rows[4:]) and resumed["exit"]["exit_code"] == 0
    assert rows[:4] == before[:4] and [r["step"] for r in rows] == list(range(1, 9))


@pytest.fixture
def wandb_calls(monkeypatch):
    """A fake `wandb` module recording init kwargs, logged (step, data) and finish calls: for what
    offline cannot show (an online run's mode)."""
    calls: dict = {"init": [], "log": [], "finish": []}

    class Run:
        def log(self, data, step):
            calls["log"].append((step, data))

        def finish(self, exit_code=None):
            calls["finish"].append(exit_code)

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


def test_wandb_mode_from_the_environment_and_no_sinks_off_rank0(tmp_path, wandb_calls, monkeypatch):
    cfg = TrackersConfig.model_validate(["wandb"])  # the list shorthand
    close_sinks(open_sinks(cfg, tmp_path / "a", {}))  # WANDB_MODE unset: offline
    monkeypatch.setenv("WANDB_MODE", "online")
    close_sinks(open_sinks(cfg, tmp_path / "b", {}))  # set: wandb reads it (online needs a server)
    assert [i["mode"] for i in wandb_calls["init"]] == ["offline", None]
    assert wandb_calls["finish"] == [0, 0]
    monkeypatch.setenv("RANK", "1")
    assert open_sinks(cfg, tmp_path / "c", {}) == [] and len(wandb_calls["init"]) == 2


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
