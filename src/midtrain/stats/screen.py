"""Task screening: which tasks can inform a decision, from the start checkpoint and the control only
(never the arms, so that selecting tasks cannot favour an arm's result).

A task whose records do not carry the primary metric (a generative task when the primary is a
likelihood or an accuracy) leaves the primary score with that reason, whatever `select` says;
its signal and noise are shown on its own `score` (exact match, pass@1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from midtrain.eval.results import Examples
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.results import TaskScreen

if TYPE_CHECKING:
    from midtrain.stats.data import StudyData

CEILING = 0.95  # start accuracy at or above this: the task cannot show a gain
NEAR_CHANCE = 0.02  # start accuracy this close to chance: the task cannot show a loss


def screen_tasks(data: StudyData, cfg: StudyConfig) -> list[TaskScreen]:
    """Signal, noise, SNR and saturation per task: signal = how far the control's mean moved from
    the start (|control - start| / sqrt 2, the sd of the two), noise = the control's seed-to-seed
    sd.

    With `[eval] select = "snr"`, saturated tasks and tasks with SNR below `analysis.min_snr` leave
    the primary score (each with its reason); otherwise every task stays in.
    """
    metric, tasks = cfg.analysis.primary, cfg.eval.tasks
    out = _screen_from(cfg) if cfg.eval.select_from else [_screen(data, cfg, t) for t in tasks]
    missing = {t: why for t in tasks if (why := lacks_metric(data, t, metric))}
    for s in out:
        if s.task in missing:
            s.in_primary, s.reason = False, missing[s.task]
    return _keep_some(out, set(missing))


def lacks_metric(data: StudyData, task: str, metric: str) -> str:
    """Why `task` cannot enter a primary on `metric` ("" when it can, or has no records yet)."""
    if data.has(task, metric) or not any(
        task in ex.tasks for g in data.groups.values() for ex in g
    ):
        return ""
    scored = data.score_metric(task)
    if scored is None:
        return f"no {metric} and no score per example"
    return f'scored by {scored}, no {metric} per example; primary = "score" counts it'


def _screen(data: StudyData, cfg: StudyConfig, t: str) -> TaskScreen:
    metric = cfg.analysis.primary if data.has(t, cfg.analysis.primary) else "score"
    ctrl = data.groups.get(CONTROL, [])
    scores = [x for ex in ctrl if math.isfinite(x := ex.score(t, metric))]
    signal = noise_sd = None
    if scores and data.start is not None and t in data.start.tasks:
        signal = abs(float(np.mean(scores)) - data.start.score(t, metric)) / math.sqrt(2)
    if len(scores) > 1:
        noise_sd = float(np.std(scores, ddof=1))
    snr = signal / noise_sd if signal is not None and noise_sd else None
    start_acc, chance = _start_acc(data.start, t)
    sat = _saturation(start_acc, chance)
    reason, keep, snr_select = "", True, cfg.eval.select == "snr"
    if snr_select and sat:
        keep, reason = False, f"saturated at {sat} (start acc {start_acc:.3f})"
    elif snr_select and snr is not None and snr < cfg.analysis.min_snr:
        keep, reason = False, f"SNR {snr:.2f} < min_snr {cfg.analysis.min_snr:g}"
    return TaskScreen(task=t, signal=signal, noise=noise_sd, snr=snr, start_acc=start_acc,
                      chance=chance, saturated=sat, in_primary=keep, reason=reason)  # fmt: skip


def _keep_some(out: list[TaskScreen], missing: set[str]) -> list[TaskScreen]:
    """Never drop every task: keep them all (except those without the primary metric)."""
    if out and not any(s.in_primary for s in out):
        for s in out:
            if s.task not in missing:
                s.in_primary, s.reason = True, s.reason + "; kept: every task was screened out"
    return out


def _screen_from(cfg: StudyConfig) -> list[TaskScreen]:
    """`select_from`: the tasks' signal, noise and saturation from an earlier study's screening
    (its start and control), judged with this study's `min_snr`; tasks it did not screen stay."""
    from midtrain.study.results import StudyResult

    earlier = StudyResult.load(Path(cfg.eval.select_from) / "results.json")
    old = {s.task: s for s in earlier.screen}
    where = f"screened in {earlier.study}"
    out = []
    for t in cfg.eval.tasks:
        s = old.get(t)
        if s is None:
            out.append(TaskScreen(task=t, signal=None, noise=None, snr=None, start_acc=None,
                                  chance=None, saturated=None, in_primary=True,
                                  reason=f"not screened in {earlier.study}; kept"))  # fmt: skip
            continue
        keep, reason = True, where
        if s.saturated:
            keep, reason = False, f"saturated at {s.saturated} ({where})"
        elif s.snr is not None and s.snr < cfg.analysis.min_snr:
            keep, reason = False, f"SNR {s.snr:.2f} < min_snr {cfg.analysis.min_snr:g} ({where})"
        out.append(s.model_copy(update={"in_primary": keep, "reason": reason}))
    return out


def _start_acc(start: Examples | None, task: str) -> tuple[float | None, float | None]:
    """The start checkpoint's accuracy (its score for a task without one: exact match, pass@1) and
    chance: 1 / choices for multiple choice, 0 for a task answered by generation."""
    if start is None or task not in start.tasks:
        return None, None
    recs = list(start.tasks[task].values())
    acc = [r.acc for r in recs if r.acc is not None]
    generated = not acc and any(r.score is not None for r in recs)
    if generated:
        acc = [r.score for r in recs if r.score is not None]
    n = [r.choices for r in recs if r.choices]
    chance = float(np.mean([1.0 / c for c in n])) if n else (0.0 if generated else None)
    return (float(np.mean(acc)) if acc else None), chance


def _saturation(acc: float | None, chance: float | None) -> str | None:
    if acc is None:
        return None
    if acc >= CEILING:
        return "ceiling"
    if chance is not None and acc <= chance + NEAR_CHANCE:
        return "chance"
    return None
