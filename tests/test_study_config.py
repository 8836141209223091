"""Malformed study files: one-line errors naming the field, exit code 2, nothing created."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from midtrain import cli
from midtrain.study.config import load_study
from midtrain.study.plan import CONTROL, arm_mix, make_plan

GOOD = """
name = "t"
checkpoint = "ckpt"
tokens = 8192
seeds = [0, 1]
fractions = [0.3]

[stores]
web = "stores/web"
math = "stores/math"
hq = "stores/hq"
flan = "stores/flan"

[base]
web = 1.0

[[candidates]]
name = "math"
mix = { math = 1.0 }

[[candidates]]
name = "hq+flan"
mix = { hq = 0.5, flan = 0.5 }
fractions = [0.3, 0.5]

[eval]
tasks = ["world_facts"]
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "study.toml"
    p.write_text(text)
    return p


def run_cli(argv, capsys) -> tuple[int, str]:
    old = sys.argv
    sys.argv = ["midtrain", *argv]
    try:
        with pytest.raises(SystemExit) as e:
            cli.main()
    finally:
        sys.argv = old
    return e.value.code, capsys.readouterr().err


BAD = {
    "ratios not summing to 1": (GOOD.replace("web = 1.0", "web = 0.9"), "base"),
    "negative ratio": (
        GOOD.replace("mix = { math = 1.0 }", "mix = { math = -1.0 }"),
        "candidates[0].mix",
    ),
    "unknown source": (
        GOOD.replace("mix = { math = 1.0 }", "mix = { maths = 1.0 }"),
        "candidates[0].mix.maths",
    ),
    "unknown base source": (GOOD.replace("web = 1.0", "webb = 1.0"), "base.webb"),
    "missing checkpoint": (GOOD.replace('checkpoint = "ckpt"', ""), "checkpoint"),
    "missing tokens": (GOOD.replace("tokens = 8192", ""), "tokens"),
    "misspelt field": (GOOD.replace("seeds = [0, 1]", "seed = [0, 1]"), "seed"),
    "fraction out of range": (GOOD.replace("fractions = [0.3]", "fractions = [1.5]"), "fractions"),
    "duplicate seeds": (GOOD.replace("seeds = [0, 1]", "seeds = [1, 1]"), "seeds"),
    "duplicate candidate": (
        GOOD.replace('name = "hq+flan"', 'name = "math"'),
        "candidates[1].name",
    ),
    "control as candidate": (GOOD.replace('name = "math"', 'name = "control"'), "control"),
    "guard on unknown task": (GOOD + '\n[[guards]]\ntask = "nope"\n', "guards[0].task"),
    "candidate targets a task not evaluated": (
        GOOD.replace("mix = { math = 1.0 }", 'mix = { math = 1.0 }\ntargets = ["world_arith"]'),
        "candidates[0].targets[0]: not in eval.tasks",
    ),
    "guard with both targets": (
        GOOD + '\n[[guards]]\ntask = "world_facts"\ndomain = "web"\n',
        "guards[0]",
    ),
    "train overrides a study field": (GOOD + "\n[train]\nseed = 3\n", "train"),
    "budget below one step": (GOOD.replace("tokens = 8192", "tokens = 100"), "tokens"),
    "not TOML": ("name = [", "not valid TOML"),
    "task setting for a task not evaluated": (
        GOOD + "\n[eval.task_settings.world_arith]\nlimit = 5\n",
        "eval.task_settings.world_arith",
    ),
    "task setting out of range": (
        GOOD + "\n[eval.task_settings.world_facts]\nnum_fewshot = -1\n",
        "eval.task_settings.world_facts.num_fewshot",
    ),
    "checkpoint missing on disk": (GOOD, "checkpoint:"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_study_gives_one_line_error(case, tmp_path, capsys):
    text, needle = BAD[case]
    study = write(tmp_path, text)
    out = tmp_path / "out"
    code, err = run_cli(["study", "run", str(study), "--out", str(out)], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert needle in lines[0]
    assert not out.exists()


def test_missing_study_file(tmp_path, capsys):
    code, err = run_cli(
        ["study", "run", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and "no such file" in err


def test_plan_has_shared_controls_and_arm_mixes(tmp_path):
    cfg = load_study(write(tmp_path, GOOD))
    for p in ("ckpt",):
        (tmp_path / p).mkdir()
        (tmp_path / p / "config.json").write_text("{}")
    plan = make_plan(cfg, tmp_path / "out")
    arms = plan.arms()
    assert arms == ["math@0.3", "hq+flan@0.3", "hq+flan@0.5"]
    assert [r.seed for r in plan.runs if r.arm == CONTROL] == [0, 1]
    assert len(plan.runs) == 2 * (1 + 3)
    hqflan = {m.source: m.ratio for m in arm_mix(cfg, cfg.candidates[1], 0.3)}
    assert hqflan == pytest.approx({"web": 0.7, "hq": 0.15, "flan": 0.15})
    control = plan.control(0)
    assert [m.model_dump() for m in control.mix] == [
        {"source": "web", "ratio": 1.0, "max_repetition": 1.0}
    ]
    # same inputs, same ids; a different seed gives a different run
    again = make_plan(cfg, tmp_path / "out")
    assert [r.run_id for r in again.runs] == [r.run_id for r in plan.runs]
    assert plan.control(0).run_id != plan.control(1).run_id
    # arms of the same seed share one control (the plan holds exactly one per seed)
    assert len({r.run_id for r in plan.runs}) == len(plan.runs)
    train_job, eval_job = plan.runs[0].chain(plan.eval_job)
    assert train_job.stage == "train" and train_job.spec.seed == 0
    assert eval_job.spec.checkpoint == str(plan.runs[0].dir / "final")
    assert eval_job.spec.settings.task_settings == {}


def test_per_task_eval_settings_reach_every_job(tmp_path):
    text = GOOD + "\n[eval.task_settings.world_facts]\nlimit = 50\nnum_fewshot = 3\n"
    cfg = load_study(write(tmp_path, text))
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    plan = make_plan(cfg, tmp_path / "out")
    want = {"world_facts": {"limit": 50, "num_fewshot": 3}}
    chains = plan.chains()
    evals = [[j for j in c if j.stage == "eval"][-1] for c in chains]  # each chain ends pruning
    assert all(j.spec.settings.hashed()["task_settings"] == want for j in evals)
    assert chains[0][0].spec.checkpoint == cfg.checkpoint  # the start checkpoint is evaluated too
    # eval settings do not change what a run trains: same run ids as without them
    plain = make_plan(load_study(write(tmp_path, GOOD)), tmp_path / "out")
    assert [r.run_id for r in plan.runs] == [r.run_id for r in plain.runs]


def test_study_tables_name_every_field_of_their_models():
    """study/tables.py's TypedDicts (what presets and rounds build) have exactly their pydantic
    models' keys, so a field added to a section cannot be missing from its table."""
    import typing

    from midtrain.eval.api import TaskSetting
    from midtrain.probe.config import SftProbeSpec, SftSet
    from midtrain.sft.config import SftTemplate
    from midtrain.study import tables as t
    from midtrain.study.config import StudyConfig
    from midtrain.study.keep import KeepSpec
    from midtrain.study.resources import Resources
    from midtrain.study.sections import AnalysisSpec, Candidate, EvalSpec, Guard
    from midtrain.train.config import OptimizerConfig, ScheduleConfig

    pairs = [(t.StudyTable, StudyConfig), (t.ScheduleTable, ScheduleConfig),
             (t.TaskSettingTable, TaskSetting), (t.EvalTable, EvalSpec),
             (t.AnalysisTable, AnalysisSpec), (t.SftSetTable, SftSet),
             (t.TemplateTable, SftTemplate), (t.OptimizerTable, OptimizerConfig),
             (t.SftProbeTable, SftProbeSpec), (t.ResourcesTable, Resources),
             (t.KeepTable, KeepSpec), (t.GuardTable, Guard), (t.CandidateTable, Candidate)]  # fmt: skip
    for table, model in pairs:
        keys = set(typing.get_type_hints(table))
        assert keys == set(model.model_fields), (table.__name__, keys ^ set(model.model_fields))
