"""Trajectories: every arm's deltas at each eval point of its anneal (`[eval] points`).

A point is a run's weights after a share of its steps: a model *in the middle of* its cooldown,
at a higher LR than the end, not a finished shorter anneal. Each point is analysed exactly as
the end is (`analysis.analyse_arm` on that point's per-example records: the same paired
differences, pooled run noise and intervals), on the runs evaluated at every point. From the
points come:

- `still-moving`: the primary delta at the last two points differs significantly (the contrast
  of the per-run, per-example change between them, with the same interval machinery) or
  changes sign;
- `anneal-too-short` (study-wide): the control's own base-domain loss did not fall measurably
  below the start checkpoint's by the end, or every arm is still moving;
- Signal-and-Noise's noise of each task: its variation over the late points of one run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from midtrain.stats import analysis, contrast
from midtrain.stats.data import StudyData, build_quantity
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.plan import StudyPlan
from midtrain.study.results import ArmAnalysis, ArmResult, TaskScreen
from midtrain.study.trajectory_results import (
    ControlPoint,
    Estimate,
    GuardPoint,
    Trajectory,
    TrajectoryInfo,
    TrajectoryPoint,
)

LATE = 0.5  # Signal-and-Noise's late points: those at or after half the anneal


@dataclass
class PointData:
    """The per-example records of every run complete at all points, at one point."""

    fraction: float
    tokens: int
    data: StudyData


def point_data(plan: StudyPlan, finished) -> list[PointData]:
    """One StudyData per eval point (the end last), on the runs evaluated at every point."""
    runs = [r for r in plan.runs if finished.done(r)
            and all(p.step in finished.points[r.name] for p in r.points)]  # fmt: skip
    if not plan.runs or not plan.runs[0].points:
        return []
    bt = plan.runs[0].run_config.batch_tokens
    designs = {r.arm: ("cpt" if r.cpt else f"{r.fraction:g}") for r in plan.runs}
    out = []
    for k, p in enumerate([*plan.runs[0].points, None]):
        groups: dict[str, list] = {}
        seeds: dict[str, list[int]] = {}
        for r in runs:
            ex = finished.evals[r.name] if p is None else finished.points[r.name][r.points[k].step]
            groups.setdefault(r.arm, []).append(ex)
            seeds.setdefault(r.arm, []).append(r.seed)
        frac = 1.0 if p is None else p.fraction
        tokens = plan.config.tokens // bt * bt if p is None else p.tokens(bt)
        out.append(PointData(frac, tokens, StudyData(groups, finished.start, seeds,
                                                              designs)))  # fmt: skip
    return out


def _estimate(delta, ci, se=None, df=None, p=None) -> Estimate | None:
    if delta is None or ci is None or not all(math.isfinite(x) for x in [delta, *ci]):
        return None
    fin = analysis._finite
    return Estimate(delta=float(delta), ci=[float(c) for c in ci], se=fin(se), df=fin(df), p=fin(p))


def _point(pd: PointData, a: ArmAnalysis) -> TrajectoryPoint:
    pr = a.primary
    primary = _estimate(pr.delta, pr.ci, pr.se, pr.df, pr.p) if pr else None
    tasks = {t: e for t, d in a.tasks.items() if (e := _estimate(d.delta, d.ci, d.se, d.df, d.p))}
    doms = {k: e for k, d in a.domains.items() if (e := _estimate(d.delta_bpb, d.ci, d.se, d.df))}
    guards = [
        GuardPoint(target=g.target, status=g.status, delta=g.delta, ci=g.ci) for g in a.guards
    ]
    return TrajectoryPoint(fraction=pd.fraction, tokens=pd.tokens, primary=primary, tasks=tasks,
                           domains=doms, guards=guards)  # fmt: skip


def aligned(points: list[PointData], task: str, metric: str) -> list[contrast.Quantity] | None:
    """The task's Quantity at every point on the same runs and examples (rows and columns line
    up, so a per-run, per-example combination of points is a Quantity too)."""
    groups = list(points[0].data.groups)
    tables = [{g: [ex.values("tasks", task, metric) for ex in pd.data.groups[g]] for g in groups}
              for pd in points]  # fmt: skip
    flat = [t for tb in tables for ts in tb.values() for t in ts]
    if not flat or any(t is None for t in flat):
        return None
    ids = set.intersection(*(set(t) for t in flat))
    seeds = points[0].data.seeds
    qs = [build_quantity({g: [{i: t[i] for i in ids} for t in ts] for g, ts in tb.items()},
                                  seeds) for tb in tables]  # fmt: skip
    return None if any(q is None for q in qs) else qs  # type: ignore[return-value]


def combine(qs: list[contrast.Quantity], w: list[float]) -> contrast.Quantity:
    """sum_k w_k Y_k per run and example (aligned quantities)."""
    groups = {g: sum(wk * q.groups[g] for wk, q in zip(w, qs, strict=True)) for g in qs[0].groups}
    return contrast.Quantity(groups, qs[0].seeds)  # type: ignore[arg-type]


def still_moving(
    prev: float, last: float, change: contrast.Contrast, alpha: float
) -> tuple[bool, str]:
    """Whether a trajectory has not settled: the change between its last two points is
    significant (two-sided p < alpha), or the delta changed sign between them."""
    if prev * last < 0:
        return True, f"the delta changed sign ({prev:+.3g} -> {last:+.3g})"
    if change.decidable and math.isfinite(change.p) and change.p < alpha:
        return True, (f"the delta moved {change.delta:+.3g} between the last two points "
                      f"(p {change.p:.3g})")  # fmt: skip
    return False, ""


def arm_trajectory(points: list[PointData], arm: str, cfg: StudyConfig, primary_tasks: list[str],
                   sources: list[str], conf: float) -> Trajectory | None:  # fmt: skip
    """The arm's deltas at every point and its change over the last two."""
    if any(arm not in pd.data.groups or CONTROL not in pd.data.groups for pd in points):
        return None
    per = [analysis.analyse_arm(pd.data, arm, cfg, primary_tasks, sources, conf) for pd in points]
    out = Trajectory(points=[_point(pd, a) for pd, a in zip(points, per, strict=True)],
                     runs=sum(len(points[-1].data.groups[g]) for g in (arm, CONTROL)))  # fmt: skip
    metric = cfg.analysis.primary
    tasks = per[-1].primary.tasks if per[-1].primary else []
    qs_by_task = [aligned(points, t, metric) for t in tasks]
    if not tasks or any(q is None for q in qs_by_task) or len(points) < 2:
        return out
    peers, end = points[-1].data.peers(arm), points[-1].data
    w = analysis.primary_weights(end, [q[-1] for q in qs_by_task], cfg.analysis.primary_score)
    change = contrast.contrast([combine(q[-2:], [-1.0, 1.0]) for q in qs_by_task], arm, CONTROL,
                            conf, peers, w)  # fmt: skip
    out.change = _estimate(change.delta, change.ci, change.se, change.df, change.p)
    last, prev = out.points[-1].primary, out.points[-2].primary
    if last is not None and prev is not None and change.decidable:
        out.still_moving, out.why_moving = still_moving(prev.delta, last.delta, change, 1 - conf)
    return out


def control_points(points: list[PointData], base: list[str], conf: float) -> list[ControlPoint]:
    """The control's base-domain bpb minus the start's at every point (t-interval over seeds)."""
    out = []
    for pd in points:
        ctrl, start = pd.data.groups.get(CONTROL, []), pd.data.start
        drops = {}
        for d in base:
            if start is None or d not in start.domains or len(ctrl) < 2:
                continue
            if not all(d in ex.domains for ex in ctrl):
                continue
            diff = np.array([ex.domain_bpb(d) for ex in ctrl]) - start.domain_bpb(d)
            se = float(diff.std(ddof=1) / math.sqrt(len(diff)))
            h = float(sps.t.ppf(0.5 + conf / 2, len(diff) - 1)) * se
            m = float(diff.mean())
            drops[d] = Estimate(delta=m, ci=[m - h, m + h], se=se, df=len(diff) - 1)
        out.append(ControlPoint(fraction=pd.fraction, tokens=pd.tokens, drop=drops))
    return out


def too_short(control: list[ControlPoint], arms: list[ArmResult]) -> str | None:
    """Why the anneal is too short to read (None: it is not): the control's base-domain loss did
    not fall measurably below the start's by the end, or every arm is still moving."""
    end = control[-1].drop if control else {}
    if end and not any(e.ci[1] < 0 for e in end.values()):
        return "the control's base-domain loss did not fall measurably below the start's"
    moving = [a.trajectory.still_moving for a in arms if a.trajectory is not None]
    moving = [m for m in moving if m is not None]
    if moving and all(moving):
        return "every arm's primary delta is still moving between the last two points"
    return None


def late_noise(screen: list[TaskScreen], points: list[PointData], metric: str) -> None:
    """Signal-and-Noise's noise (Heineman et al. 2025): the sd of a task's score over the late
    points of one control run (root mean square over the control's runs), beside the
    run-to-run noise. Needs 2 late points (fraction >= LATE)."""
    late = [pd for pd in points if pd.fraction >= LATE]
    if len(late) < 2:
        return
    for s in screen:
        m = metric if late[-1].data.has(s.task, metric) else "score"
        runs = zip(*(pd.data.groups.get(CONTROL, []) for pd in late), strict=True)
        sds = [np.std([ex.score(s.task, m) for ex in exs], ddof=1) for exs in runs]
        sds = [float(x) for x in sds if math.isfinite(x)]
        s.noise_late = float(math.sqrt(np.mean(np.square(sds)))) if sds else None


def info(plan: StudyPlan, points: list[PointData], finished, base: list[str], conf: float,
         records) -> TrajectoryInfo:  # fmt: skip
    """The study's points, the control along them, and the evaluations' share of the time."""
    train_s = float(sum(r.wall_s or 0.0 for r in records))
    ev = float(finished.eval_seconds)
    fr = plan.config.eval.point_fractions
    bt = plan.runs[0].run_config.batch_tokens if plan.runs else plan.config.batch_tokens
    steps = plan.config.tokens // bt
    toks = [p.tokens(bt) for p in plan.runs[0].points] + [steps * bt] if plan.runs else []
    return TrajectoryInfo(
        fractions=fr, tokens=toks, control=control_points(points, base, conf),
        eval_seconds=round(ev, 2), train_seconds=round(train_s, 2),
        eval_share=ev / (ev + train_s) if ev + train_s > 0 else None,
    )  # fmt: skip
