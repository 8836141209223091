"""Pre-registration: the analysis plan is recorded before the first run; changing it once results
exist is refused unless --reanalyze, which the results then carry."""

from __future__ import annotations

import json

import pytest

from midtrain.errors import MidtrainError
from midtrain.study.config import parse_study
from midtrain.study.prereg import analysis_plan, check_plan


def study(**analysis):
    return parse_study({
        "checkpoint": "ckpt", "tokens": 8192, "stores": {"web": "web", "math": "math"},
        "base": {"web": 1.0}, "eval": {"tasks": ["t1", "t2"]},
        "candidates": [{"name": "math", "mix": {"math": 1.0}}], "analysis": analysis,
    })  # fmt: skip


def register(tmp_path, cfg):
    (tmp_path / "study.json").write_text(json.dumps({"analysis_plan": analysis_plan(cfg)}))


def test_a_changed_plan_is_refused_once_results_exist(tmp_path):
    register(tmp_path, study())
    changed = study(correction="none", primary_score="standardized")
    with pytest.raises(
        MidtrainError, match=r"primary_score, correction: the analysis plan changed"
    ):
        check_plan(changed, tmp_path, has_results=True, reanalyze=False)
    assert check_plan(changed, tmp_path, True, reanalyze=True) == ["primary_score", "correction"]


def test_before_results_or_unchanged_the_plan_is_free(tmp_path):
    register(tmp_path, study())
    assert check_plan(study(correction="bh"), tmp_path, has_results=False, reanalyze=False) == []
    assert check_plan(study(), tmp_path, has_results=True, reanalyze=False) == []
    assert check_plan(study(correction="bh"), tmp_path / "new", True, False) == []  # unregistered


@pytest.mark.parametrize(
    ("analysis", "tasks", "match"),
    [
        ({"mde": 0}, ["t1"], "analysis.mde"),
        ({"allow_task_regression": True}, [], "analysis.allow_task_regression"),
    ],
)
def test_bad_analysis_fields_are_one_line_errors(analysis, tasks, match):
    with pytest.raises(MidtrainError, match=match):
        parse_study({
            "checkpoint": "ckpt", "tokens": 8192, "stores": {"web": "web", "math": "math"},
            "base": {"web": 1.0}, "eval": {"tasks": tasks},
            "candidates": [{"name": "math", "mix": {"math": 1.0}}], "analysis": analysis,
        })  # fmt: skip
