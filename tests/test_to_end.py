"""`starts_mode = "to_end"`: each start trains to the end of full_run_tokens on its checkpoint's
schedule continued (Liu et al. 2025), unit-level: the planned runs' tokens and LR schedules for two
starts at different positions, and bad input as one line that writes nothing."""

from __future__ import annotations

import json

import pytest
from test_config_docs import _tiny_checkpoint
from test_integrate import main_code

from midtrain.design.grid import start_list, sub_config
from midtrain.study.config import parse_study
from midtrain.train.checkpoint import STATE_DIR, TrainerState

FULL = 4096  # tokens of the full run; a step is 256 tokens
EARLY = dict(lr=3e-3, tokens_seen=1024, steps=4,  # a stable-phase checkpoint: constant LR
             schedule={"name": "constant", "start_lr": 3e-3, "final_lr": 3e-3, "total_steps": 4,
                       "warmup_steps": 0})  # fmt: skip
LATE = dict(lr=1e-3, tokens_seen=3072, steps=12,  # mid-way down a cosine to 1e-4 it had not ended
            schedule={"name": "cosine", "start_lr": 3e-3, "final_lr": 1e-4, "total_steps": 16,
                      "warmup_steps": 0})  # fmt: skip


def with_state(path, **state):
    (path / STATE_DIR).mkdir(parents=True, exist_ok=True)
    (path / STATE_DIR / "trainer.json").write_text(TrainerState(**state).model_dump_json())
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tokenizer, web and code stores, and two checkpoints: early (25%) and late (75%)."""
    from _data_fixtures import make_docs, train_tiny_tokenizer

    from midtrain.data.prepare import prepare_source
    from midtrain.data.tokenizer import load_tokenizer

    root = tmp_path_factory.mktemp("to_end")
    tok = load_tokenizer(train_tiny_tokenizer(root / "tok"))
    for i, name in enumerate(("web", "code")):
        src = root / f"{name}.txt"
        src.write_text("\n".join(make_docs(80, seed=i)))
        prepare_source(name, [src], root / "data" / name, tok, heldout_fraction=0.05)
    early = with_state(_tiny_checkpoint(root / "early", tok), **EARLY)
    late = with_state(_tiny_checkpoint(root / "late", tok), **LATE)
    return {"root": root, "early": early, "late": late}


def study(world, **over) -> dict:
    root = world["root"]
    return {
        "checkpoint": str(world["late"]), "starts": [str(world["early"])],
        "starts_mode": "to_end", "full_run_tokens": FULL,
        "stores": {s: str(root / "data" / s) for s in ("web", "code")}, "base": {"web": 1.0},
        "base_max_repetition": 50.0, "seeds": [0], "tokens": 512, "seq_len": 32,
        "batch_tokens": 256, "micro_batch": 8,
        "candidates": [{"name": "code", "mix": {"code": 1.0}, "fractions": [0.5],
                        "max_repetition": 50.0, "continued_pretraining": True}],
        "schedule": {"name": "linear", "final_lr_fraction": 0.0},
    } | over  # fmt: skip


def test_each_start_trains_to_the_end_on_its_schedule_continued(world, tmp_path):
    from midtrain.driver.runner import prepare
    from midtrain.train.plan import plan_run

    cfg = parse_study(study(world))
    early, late = start_list(cfg)  # earliest first
    assert (early.tokens_seen, early.tokens, early.progress) == (1024, FULL - 1024, 0.25)
    assert (late.tokens_seen, late.tokens, late.progress) == (3072, FULL - 3072, 0.75)
    assert early.dir.endswith("-to_end") and early.dir != late.dir
    # the stable-phase start records `constant`: the study's shape; the late one its own cosine
    assert (early.schedule_from, early.schedule.name, early.schedule.final_lr_fraction) == (
        "study", "linear", 0.0)  # fmt: skip
    assert (late.schedule_from, late.schedule.name, late.schedule.final_lr) == (
        "checkpoint", "cosine", 1e-4)  # fmt: skip
    expect = {early.label: (12, 3e-3, 0.0, "linear"), late.label: (4, 1e-3, 1e-4, "cosine")}
    for s in (early, late):
        sub = sub_config(cfg, s)
        assert sub.checkpoint_tokens == s.tokens_seen and sub.starts == []
        plan = prepare(sub, tmp_path / s.dir)
        assert {r.arm for r in plan.runs} == {"control", "code@0.5", "code@cpt"}
        for r in plan.runs:  # the control too: a base-only continuation from the same start
            steps, start_lr, final_lr, name = expect[s.label]
            assert r.run_config.init == s.checkpoint and r.run_config.tokens == s.tokens
            bound = plan_run(r.run_config).schedule
            assert (bound.total_steps, bound.name) == (steps, name)
            assert bound.start_lr == pytest.approx(start_lr)  # the LR the checkpoint records
            assert bound.final_lr == pytest.approx(final_lr) and bound.warmup_steps == 0
            assert bound.lr_at(0) == pytest.approx(start_lr)  # no jump where it left off


def test_cooldown_mode_gives_every_start_the_studys_own_cooldown(world):
    cfg = parse_study(study(world, starts_mode="cooldown"))
    for s in start_list(cfg):
        sub = sub_config(cfg, s)
        assert s.tokens == sub.tokens == 512 and s.schedule is None
        assert sub.schedule == cfg.schedule and not s.dir.endswith("-to_end")


def test_a_study_schedule_start_lr_is_kept(world):
    """schedule.start_lr in the study is the user's word, as for any run (the planner warns)."""
    cfg = parse_study(study(world, schedule={"name": "cosine", "start_lr": 2e-3, "final_lr": 0.0}))
    early, late = start_list(cfg)
    assert early.schedule.start_lr == late.schedule.start_lr == 2e-3


def _bad(world, tmp_path, capsys, **over) -> list[str]:
    path = tmp_path / "study.toml"
    import tomli_w

    path.write_text(tomli_w.dumps(study(world, **over)))
    capsys.readouterr()
    code = main_code(["study", "run", str(path), "--out", str(tmp_path / "out"), "--dry-run"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert not (tmp_path / "out").exists()
    return err[0]


def test_to_end_without_full_run_tokens_is_one_line(world, tmp_path, capsys):
    data = study(world)
    del data["full_run_tokens"]
    path = tmp_path / "study.toml"
    import tomli_w

    path.write_text(tomli_w.dumps(data))
    capsys.readouterr()
    assert main_code(["study", "run", str(path), "--out", str(tmp_path / "out")]) == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert err.startswith("error: study.toml: starts_mode: ") and "set full_run_tokens" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("over", "where", "what"),
    [
        ({"full_run_tokens": 2048}, "checkpoint", "has seen 3,072 tokens, past full_run_tokens"),
        ({"full_run_tokens": 3072}, "checkpoint", "at full_run_tokens 3,072"),
        ({"full_run_tokens": 3200}, "checkpoint", "less than one step from"),
    ],
)
def test_a_start_past_the_full_run_is_one_line(world, tmp_path, capsys, over, where, what):
    err = _bad(world, tmp_path, capsys, **over)
    assert err.startswith(f"error: study.toml: {where}: ") and what in err, err
    assert "raise full_run_tokens to >= 3,328" in err


def test_a_start_without_tokens_seen_is_one_line(world, tmp_path, capsys):
    bare = world["root"] / "bare"
    if not bare.exists():
        import shutil

        shutil.copytree(world["early"], bare, ignore=shutil.ignore_patterns(STATE_DIR))
    err = _bad(world, tmp_path, capsys, starts=[str(bare)])
    assert err.startswith("error: study.toml: starts[0]: ") and "no midtrain_state" in err


def test_to_end_without_starts_is_one_line(world, tmp_path, capsys):
    err = _bad(world, tmp_path, capsys, starts=[])
    assert err.startswith("error: study.toml: starts_mode: ") and "add starts" in err


def test_grid_json_records_mode_and_budgets(world):
    """grid.json says how each start ran (a GridResult round-trips)."""
    from midtrain.design.grid import GridResult, grid_result, markdown

    cfg = parse_study(study(world))
    starts = start_list(cfg)
    g = grid_result(cfg, starts, [_no_arms()] * len(starts))
    g = GridResult.model_validate(json.loads(g.model_dump_json()))
    assert g.mode == "to_end" and g.full_run_tokens == FULL
    assert [s.tokens for s in g.starts] == [3072, 1024]
    md = markdown(g)
    assert "to the end of the full run (4,096 tokens" in md
    assert "| 25% | 1,024 | 3,072 | linear to 0 x its start LR (from the study) |" in md
    assert "| 75% | 3,072 | 1,024 | cosine to 0.0001 (from the checkpoint) |" in md


def _no_arms():
    from midtrain.study.results import ControlResult, Cost, EvalInfo, StartPoint, StudyResult

    cost = Cost(runs=0, tokens=0, flops=0, wall_s=0, share_of_full_run=None)
    return StudyResult(
        study="s", start=StartPoint(), arms=[], confidence=0.95, study_flags=[],
        control=ControlResult(seeds=[], runs=[], noise_floor=None, scores={}, domains={}, cost=cost),
        eval=EvalInfo(include_path=None, tasks=[], domains=[], primary_metric="acc", limit=None,
                      num_fewshot=0),
    )  # fmt: skip
