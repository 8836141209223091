"""Pre-registration: a study's analysis plan is fixed before its first run and recorded.

`study.json` carries `analysis_plan` (primary tasks and metric, how tasks combine, selection,
correction, confidence, guards, the task-regression rule, the planned effect) from the first
`study run` on. Running the study again with another plan once runs have finished is refused in
one line; `--reanalyze` allows it, and the results and the report then say that the analysis
changed after results were seen (and which fields).
"""

from __future__ import annotations

from pathlib import Path
from typing import TypedDict

from midtrain.errors import MidtrainError
from midtrain.io import read_json
from midtrain.study.config import StudyConfig


class AnalysisPlan(TypedDict, total=False):
    """study.json's `analysis_plan` (a plan registered by an older release may lack keys)."""

    tasks: list[str]
    select: str
    select_from: str | None
    metric: str
    primary_score: str
    correction: str
    confidence: float
    guards: list[dict[str, str | float | None]]  # each a `Guard` dumped
    min_snr: float
    allow_task_regression: bool
    mde: float | None
    decide_on: str
    max_seeds: int


def analysis_plan(cfg: StudyConfig) -> AnalysisPlan:
    """Everything that decides how finished runs become verdicts."""
    a = cfg.analysis
    return {
        "tasks": list(cfg.eval.tasks), "select": cfg.eval.select, "select_from": cfg.eval.select_from, "metric": a.primary,
        "primary_score": a.primary_score, "correction": a.correction, "confidence": a.confidence,
        "guards": [g.model_dump(mode="json") for g in cfg.guards], "min_snr": a.min_snr,
        "allow_task_regression": a.allow_task_regression, "mde": a.mde, "decide_on": a.decide_on,
        "max_seeds": a.max_seeds,
    }  # fmt: skip


def registered(out: Path) -> AnalysisPlan | None:
    """The plan recorded in OUT/study.json (None before the first run, or from an older release)."""
    f = Path(out) / "study.json"
    if not f.is_file():
        return None
    try:
        return read_json(f).get("analysis_plan")
    except (OSError, ValueError):
        return None


def check_plan(cfg: StudyConfig, out: Path, has_results: bool, reanalyze: bool,
               source: str = "study file") -> list[str]:  # fmt: skip
    """The fields whose value differs from the registered plan ([] when none, or when no run has
    finished yet: a plan may change freely before results exist). Raises unless `reanalyze`."""
    old = registered(out)
    if old is None or not has_results:
        return []
    new = analysis_plan(cfg)
    changed = [k for k in new if old.get(k) != new[k]]
    if changed and not reanalyze:
        raise MidtrainError(
            f"{source}: {', '.join(changed)}: the analysis plan changed after results exist "
            f"(registered in {Path(out) / 'study.json'}); restore it, or pass --reanalyze "
            "(the report will say the analysis changed after results)"
        )
    return changed
