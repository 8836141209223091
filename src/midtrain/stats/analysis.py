"""Decide each arm against the control: pooled-run intervals, guards, flags, task screening.

The statistics are in `stats/contrast.py` (the training run is the unit of replication; the model and
the formula are in its docstring and in docs/studies.md). This module builds the per-group
matrices from the runs' per-example records, screens tasks, and turns intervals into verdicts:

- **include**: the primary score's interval lies above 0 and no guard is at risk;
- **reject**: the interval lies below 0, or a guard is broken (its interval lies wholly beyond
  the tolerance);
- **inconclusive**: the interval contains 0 (or a guard may regress), with the minimum detectable
  effect and how many seeds a detection would need;
- **no-verdict**: no task, or no run-to-run noise estimate (one run per group).

With a multiple-testing correction the include/reject decisions use the adjusted p-values.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from midtrain.eval.results import Examples
from midtrain.stats import contrast, power
from midtrain.stats.data import StudyData
from midtrain.stats.flags import check_guard, guard_status, likelihood_only_flag, own_loss_flags
from midtrain.stats.screen import screen_tasks
from midtrain.stats.sequential import look_confidence
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.results import (
    ArmAnalysis,
    DomainDelta,
    GuardResult,
    NoiseFloor,
    Pairing,
    PrimaryResult,
    StartPoint,
    TaskDelta,
    TaskNoise,
)

__all__ = ["StudyData", "analyse_arm", "decide", "screen_tasks"]


def confidence_at(cfg: StudyConfig, look: int | None = None) -> float:
    """The confidence of a study's intervals at analysis `look` (default: its last, the final
    intervals); below the stated confidence when seeds = "auto" spends alpha over looks."""
    a = cfg.analysis
    return look_confidence(
        a.confidence, a.max_seeds, cfg.looks, cfg.looks if look is None else look
    )


def pooled_noise(data: StudyData, tasks: list[str], metric: str, confidence: float) -> NoiseFloor:
    """Run-to-run noise of the primary (mean over `tasks`) and of each task, pooled over groups:
    the part seeds do not share (from the block fit; every interval uses it) and the total."""
    groups = list(data.groups)
    per_task: dict[str, TaskNoise] = {}
    qs = []
    for t in tasks:
        q = data.quantity("tasks", t, metric, groups)
        if q is None:
            continue
        qs.append(q)
        fit = contrast.block_fit(q.run_scores(), q.run_seeds())
        per_task[t] = TaskNoise(scores=list(q.run_scores()[CONTROL]), sd=_finite(fit.noise.sd))
    if len(qs) < len(tasks) or not qs:
        return NoiseFloor(metric=metric, control_scores=[], primary_sd=None, tasks=per_task)
    scores = {g: sum(q.run_scores()[g] for q in qs) / len(qs) for g in groups}
    noise = contrast.block_fit(scores, qs[0].run_seeds()).noise
    total = contrast.pooled(list(scores.values()))
    return NoiseFloor(
        metric=metric, control_scores=[float(x) for x in scores[CONTROL]],
        primary_sd=_finite(noise.sd), sd_ci=list(noise.sd_interval(confidence)) if noise.df else None,
        df=noise.df, total_sd=_finite(total.sd), total_df=total.df, tasks=per_task,
    )  # fmt: skip


def pairing(data: StudyData, tasks: list[str], metric: str) -> dict[str, Pairing]:
    """Per design: the sphericity ratio and the arm-control correlation of the primary (mean
    over `tasks`) from per-run scores (docs/studies.md)."""
    qs = [q for t in tasks if (q := data.quantity("tasks", t, metric, list(data.groups)))]
    if not qs or len(qs) < len(tasks):
        return {}
    seeds = qs[0].run_seeds()
    scores = {g: sum(q.run_scores()[g] for q in qs) / len(qs) for g in data.groups}
    out = {}
    for key in dict.fromkeys(data.designs.get(g) for g in data.groups if g != CONTROL):
        members = [CONTROL] + [
            g for g in data.groups if g != CONTROL and data.designs.get(g) == key
        ]
        by_seed = {g: dict(zip(seeds[g], scores[g], strict=True)) for g in members}
        out[str(key)] = Pairing(**power.pairing(by_seed, CONTROL).__dict__)
    return out


def analyse_arm(
    data: StudyData, arm: str, cfg: StudyConfig, primary_tasks: list[str], sources: list[str],
    confidence: float,
) -> ArmAnalysis:  # fmt: skip
    """Deltas and intervals of one arm on the primary, every task and every domain; guards."""
    groups, metric, peers = list(data.groups), cfg.analysis.primary, data.peers(arm)
    tasks, task_qs = {}, {}
    for t in cfg.eval.tasks:
        m = metric if data.has(t, metric) else "score"  # a task without it: its own score
        q = data.quantity("tasks", t, m, groups)
        if q is None:
            continue
        if m == metric:
            task_qs[t] = q
        label = m if m == metric else (data.score_metric(t) or m)
        tasks[t] = task_delta(data, t, q, arm, label, confidence, peers)
    domains = {}
    for d in cfg.domain_names:
        q = data.quantity("domains", d, "bpb", groups)
        if q is not None:
            c = contrast.contrast(q, arm, CONTROL, confidence, peers)
            domains[d] = DomainDelta(
                delta_bpb=c.delta, ci=c.ci, se=_finite(c.se), df=c.df, n_docs=q.n_examples
            )
    out = ArmAnalysis(verdict="no-verdict", reason="", tasks=tasks, domains=domains)
    chosen = [t for t in primary_tasks if t in task_qs]
    if not cfg.eval.tasks:
        out.flags.append("perplexity-only")
        out.reason = "no downstream task is configured; per-domain loss alone cannot decide"
    elif not chosen and tasks:
        out.reason = (f"no primary task has {metric} per example (the task table says why); "
                      'primary = "score" counts generative tasks')  # fmt: skip
    elif not chosen:
        out.reason = "no task results were available for this arm"
    else:
        qs = [task_qs[t] for t in chosen]
        w = primary_weights(data, qs, cfg.analysis.primary_score)
        out.primary = primary_result(qs, arm, chosen, metric, confidence, peers, w,
                                     cfg.analysis.mde)  # fmt: skip
        out.primary.score_delta, out.primary.score_ci = score_contrast(
            data, arm, chosen, confidence, peers
        )
        out.guards = [check_guard(g, out) for g in cfg.guards]
    own_loss_flags(out, sources)
    return out


def task_delta(
    data: StudyData, t: str, q: contrast.Quantity, arm: str, metric: str, confidence: float,
    peers: list[str],
) -> TaskDelta:  # fmt: skip
    """The arm's contrast on one task, with accuracy (a generative task: its score, exact match or
    pass@1) and margin beside it."""
    c = contrast.contrast(q, arm, CONTROL, confidence, peers)
    rec = TaskDelta(delta=c.delta, ci=c.ci, se=_finite(c.se), df=c.df, p=_finite(c.p),
                    n_examples=q.n_examples, n_seeds=len(data.groups[arm]), metric=metric)  # fmt: skip
    acc = "acc" if data.has(t, "acc") else "score"
    for m, name in ((acc, "acc"), ("margin", "margin")):  # reported beside the primary metric
        qm = data.quantity("tasks", t, m, list(data.groups))
        if qm is not None:
            cm = contrast.contrast(qm, arm, CONTROL, confidence, peers)
            setattr(rec, f"{name}_delta", cm.delta)
            setattr(rec, f"{name}_ci", cm.ci)
    return rec


def score_contrast(
    data: StudyData, arm: str, tasks: list[str], confidence: float, peers: list[str]
) -> tuple[float | None, list[float] | None]:
    """The arm's delta and interval on the primary tasks' mean `score` (accuracy; exact match or
    pass@1 for a generative task): what the `likelihood-only` flag reads."""
    qs = [data.quantity("tasks", t, "score", list(data.groups)) for t in tasks]
    if not qs or any(q is None for q in qs):
        return None, None
    c = contrast.contrast(qs, arm, CONTROL, confidence, peers)
    return _finite(c.delta), (c.ci if c.decidable else None)


def primary_weights(data: StudyData, qs: list[contrast.Quantity], how: str) -> list[float] | None:
    """Weights of the tasks in the primary: their mean (None), or `standardized`: each task
    divided by the sd of its paired differences pooled over every arm, so one task with a large
    swing cannot hide another."""
    if how == "mean" or len(qs) < 2:
        return None
    arms = [g for g in data.groups if g != CONTROL]
    sds = []
    for q in qs:
        diffs = [contrast.paired_diffs(q.run_scores(), q.run_seeds(), a, CONTROL) for a in arms]
        sd = contrast.pooled_diffs(diffs).sd
        sds.append(sd if math.isfinite(sd) and sd > 0 else math.nan)
    if not all(math.isfinite(x) for x in sds):
        return None
    return [1.0 / (len(qs) * sd) for sd in sds]


def primary_result(
    qs: list[contrast.Quantity], arm: str, tasks: list[str], metric: str, confidence: float,
    peers: list[str] | None = None, weights: list[float] | None = None, mde: float | None = None,
) -> PrimaryResult:  # fmt: skip
    """The arm's contrast on the primary (weighted tasks); `seeds_needed` at the planned `mde`
    (never at the observed delta: that is post-hoc power)."""
    c = contrast.contrast(qs, arm, CONTROL, confidence, peers, weights)
    w = weights or [1.0 / len(qs)] * len(qs)
    scores = sum(wt * q.run_scores()[arm] for wt, q in zip(w, qs, strict=True))
    var = c.run_var + c.example_var if c.decidable else math.nan
    return PrimaryResult(
        delta=c.delta, ci=c.ci, se=_finite(c.se), df=c.df, p=_finite(c.p), metric=metric,
        tasks=tasks, mde=_finite(c.mde()), standardized=weights is not None,
        seeds_needed=power.seeds_needed(c, mde) if c.decidable and mde else None,
        run_share=_finite(c.run_var / var) if c.decidable and var > 0 else None,
        run_scores=[float(x) for x in scores],
    )  # fmt: skip


def decide(
    arms: list[ArmAnalysis], correction: str, alpha: float, allow_task_regression: bool = False
) -> None:
    """Verdicts for every arm. The family is every decision the study can make: each arm's
    primary and each of its guards; `correction` (holm by default) adjusts their p-values
    together. A primary task significantly worse (Holm over the arm's tasks) blocks include; an
    include on a likelihood whose tasks' scores did not improve is flagged `likelihood-only`."""
    decidable = [a for a in arms if a.primary is not None and a.primary.p is not None]
    family: list[PrimaryResult | GuardResult] = [a.primary for a in decidable]
    family += [g for a in decidable for g in a.guards if g.p is not None]
    for test, p_adj in zip(family, contrast.adjust([t.p for t in family], correction), strict=True):
        test.p_adjusted = _finite(p_adj)
    for a in decidable:
        for g in a.guards:
            guard_status(g, correction, alpha)
        a.regressed_tasks = _regressed(a, correction, alpha)
        if a.regressed_tasks:
            a.flags.append("task-regression")
    for a in arms:
        if a.primary is None:
            continue
        if a.primary.p is None:
            a.verdict = "no-verdict"
            a.reason = (
                "no run-to-run noise estimate (one finished run per group); "
                "add seeds: seeds = [0, 1] or more"
            )
            continue
        _verdict(a, correction, alpha, allow_task_regression)
        likelihood_only_flag(a)


def _regressed(a: ArmAnalysis, correction: str, alpha: float) -> list[str]:
    """The arm's primary tasks that are significantly worse (Holm over them unless `none`)."""
    tasks = [t for t in a.primary.tasks if t in a.tasks and a.tasks[t].p is not None]
    if len(tasks) < 2:
        return []  # one task: the primary itself says it
    adj = contrast.adjust([a.tasks[t].p for t in tasks], "none" if correction == "none" else "holm")
    for t, p in zip(tasks, adj, strict=True):
        a.tasks[t].p_adjusted = _finite(p)
    return [t for t, p in zip(tasks, adj, strict=True) if p < alpha and a.tasks[t].delta < 0]


def _verdict(out: ArmAnalysis, correction: str, alpha: float, allow_regression: bool) -> None:
    p = out.primary
    statuses = {g.status for g in out.guards}
    lo, hi = p.ci
    if correction == "none":
        better, worse = lo > 0, hi < 0
    else:
        better = worse = p.p_adjusted is not None and p.p_adjusted < alpha
        better, worse = better and p.delta > 0, worse and p.delta < 0
    tag = f" (p {p.p:.3g}; no correction)" if correction == "none" else (
        f" (p {p.p:.3g}, adjusted {p.p_adjusted:.3g}, {correction})")  # fmt: skip
    regressed = out.regressed_tasks and not allow_regression
    if "broken" in statuses:
        broken = [g.target for g in out.guards if g.status == "broken"]
        out.verdict, out.reason = "reject", f"guard broken: {', '.join(broken)}"
    elif worse:
        out.verdict, out.reason = "reject", f"primary score worse, interval below 0{tag}"
    elif better and not statuses & {"at-risk", "missing"} and not regressed:
        out.verdict, out.reason = (
            "include",
            f"primary score better, interval above 0{tag}; guards hold",
        )
    else:
        out.verdict = "inconclusive"
        if better and regressed:
            out.reason = (f"primary better{tag}, but {', '.join(out.regressed_tasks)} got "
                          "significantly worse (allow_task_regression = true to include anyway)")  # fmt: skip
        elif better:
            out.reason = "primary better, but a guard may regress beyond its tolerance"
        else:
            out.reason = f"interval contains 0{tag}; minimum detectable effect {p.mde:.3g}"
        out.suggestion = _suggest(p)


def _suggest(p: PrimaryResult) -> str:
    if p.run_share is not None and p.run_share < 0.5:
        return (
            "eval-example noise dominates: evaluate more examples (raise eval.limit or add tasks)"
        )
    need = (
        f"about {p.seeds_needed} seeds per arm would detect an effect of {abs(p.delta):.3g}"
        if p.seeds_needed
        else "even many more seeds would not resolve an effect this small"
    )
    return f"run-to-run noise dominates: {need} (or anneal more tokens)"


def start_point(data: StudyData, tasks: list[str], metric: str, noise: NoiseFloor,
                confidence: float) -> StartPoint:  # fmt: skip
    """The start checkpoint's scores and the control's gain over it, with an interval."""

    if data.start is None or not tasks:
        return StartPoint()
    s = primary_score(data.start, tasks, metric)
    ctrl = noise.control_scores
    gain = float(np.mean(ctrl)) - s if ctrl else None
    ci = None
    if gain is not None and noise.total_sd is not None and noise.total_df > 0:
        h = sps.t.ppf(0.5 + confidence / 2, noise.total_df) * noise.total_sd / math.sqrt(len(ctrl))
        ci = [gain - h, gain + h]
    return StartPoint(
        primary=s, control_gain=gain, control_gain_ci=ci,
        tasks={t: data.start.score(t, metric) for t in tasks if t in data.start.tasks},
    )  # fmt: skip


def primary_score(ev: Examples, tasks: list[str], metric: str) -> float:
    vals = [ev.score(t, metric) for t in tasks if t in ev.tasks]
    return float(np.mean(vals)) if vals else float("nan")


def _finite(x: float | None) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None
