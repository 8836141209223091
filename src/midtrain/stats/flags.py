"""Guards and flags: what an arm's or the study's numbers say beyond the verdict.

Each flag is a test with a stated meaning (docs/studies.md, "Flags"):
`loss-task-disagreement` and `loss-only-gain` (the candidate's own-domain loss against the
primary), `likelihood-only` (a likelihood primary against the tasks' scores), `control-regresses`
and `anneal-too-short` (the anneal itself). Guards turn a domain's or a task's interval into
ok / at-risk / broken.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats as sps

from midtrain.study.config import CONTROL, Guard
from midtrain.study.results import ArmAnalysis, ArmResult, GuardResult, StartPoint

if TYPE_CHECKING:
    from midtrain.stats.data import StudyData

MIN_FIT_ARMS = 3  # other arms needed to predict an arm's task gain from its loss gain
LIKELIHOOD_METRICS = ("gold_logprob_per_byte", "margin")  # primaries read from log-likelihoods


def check_guard(g: Guard, arm: ArmAnalysis) -> GuardResult:
    """broken: the interval lies wholly beyond the tolerance; at-risk: the point estimate does.
    `p` tests "no regression beyond the tolerance" (two-sided form, so p < alpha exactly when the
    interval lies beyond it); `decide` settles the status after the study's correction."""
    if g.task:
        rec = arm.tasks.get(g.task)
        sign, target = 1.0, f"task {g.task}"
        delta = rec.delta if rec else None
    else:
        rec = arm.domains.get(g.domain or "")
        sign, target = -1.0, f"domain {g.domain}"
        delta = rec.delta_bpb if rec else None
    if rec is None or delta is None or not all(math.isfinite(x) for x in rec.ci):
        return GuardResult(target=target, tolerance=g.tolerance, status="missing", delta=delta)
    # In "higher is better" units: for bpb, lower is better, so flip the sign.
    signed, ci = sign * delta, sorted(sign * c for c in rec.ci)
    status = "broken" if ci[1] < -g.tolerance else "at-risk" if signed < -g.tolerance else "ok"
    p = None
    if rec.se and rec.df:
        t = (signed + g.tolerance) / rec.se
        p = float(min(1.0, 2 * sps.t.cdf(t, rec.df))) if t < 0 else 1.0
    return GuardResult(target=target, tolerance=g.tolerance, status=status, delta=delta,
                       ci=rec.ci, p=p)  # fmt: skip


def guard_status(g: GuardResult, correction: str, alpha: float) -> None:
    """With a correction, broken means the adjusted p is below alpha (else at-risk or ok)."""
    if correction == "none" or g.status == "missing" or g.p_adjusted is None:
        return
    if g.p_adjusted < alpha:
        g.status = "broken"
    elif g.status == "broken":
        g.status = "at-risk"


def own_loss_flags(out: ArmAnalysis, sources: list[str]) -> None:
    """The Marin HQ finding, as tests: `loss-task-disagreement` when the candidate's own-domain
    loss is significantly lower while the primary is significantly worse (the signs differ
    significantly); `loss-only-gain` when that loss is significantly lower and the primary's
    interval contains 0 (the gain does not reach the tasks, as far as this study can tell)."""
    own = [out.domains[s] for s in sources if s in out.domains]
    if not own or not all(d.ci[1] < 0 for d in own) or out.primary is None:
        return
    lo, hi = out.primary.ci
    if hi < 0:
        out.flags.append("loss-task-disagreement")
    elif lo <= 0:
        out.flags.append("loss-only-gain")


def likelihood_only_flag(a: ArmAnalysis) -> None:
    """`likelihood-only`: the arm is included on a likelihood primary (gold_logprob_per_byte or
    margin) while the same tasks' mean score (accuracy; exact match or pass@1 for a generative
    task) is not significantly better: its interval (unadjusted) contains 0 or lies below it.
    The model puts more probability on the right answers, but picks or writes them no more often,
    as far as this study can tell."""
    p = a.primary
    if a.verdict != "include" or p is None or p.metric not in LIKELIHOOD_METRICS:
        return
    if p.score_ci is not None and p.score_ci[0] <= 0 and "likelihood-only" not in a.flags:
        a.flags.append("likelihood-only")


def anneal_flags(
    data: StudyData, base: list[str], start: StartPoint, confidence: float
) -> list[str]:
    """`control-regresses`: the control's primary fell significantly over the anneal.
    `anneal-too-short`: the control's held-out loss on no base domain fell measurably below the
    start checkpoint's (a t-interval over the control's seeds), so the cooldown itself did not
    register."""
    flags = []
    if start.control_gain_ci is not None and start.control_gain_ci[1] < 0:
        flags.append("control-regresses")
    ctrl = data.groups.get(CONTROL, [])
    if data.start is None or len(ctrl) < 2:
        return flags
    fell = []
    for d in base:
        if d not in data.start.domains or not all(d in ex.domains for ex in ctrl):
            continue
        diff = np.array([ex.domain_bpb(d) for ex in ctrl]) - data.start.domain_bpb(d)
        h = sps.t.ppf(0.5 + confidence / 2, len(diff) - 1) * diff.std(ddof=1) / math.sqrt(len(diff))
        fell.append(diff.mean() + h < 0)
    if fell and not any(fell):
        flags.append("anneal-too-short")
    return flags


def own_loss_delta(a: ArmResult) -> float | None:
    """The mean bpb delta of the arm over its candidate's own domains (None if none measured)."""
    own = [a.domains[d].delta_bpb for d in a.candidate_mix if d in a.domains]
    own = [x for x in own if x is not None and math.isfinite(x)]
    return float(np.mean(own)) if own else None


def predicted_gain_flags(arms: list[ArmResult]) -> None:
    """`loss-task-disagreement` when the own-domain loss fell significantly and the primary's
    interval lies wholly below the gain that loss predicts. The prediction is a least-squares line
    of primary delta on own-domain bpb delta fitted to the study's *other* decided arms (at least
    `MIN_FIT_ARMS`, leave-one-out so an arm never predicts itself), used only where that line
    says lower loss goes with higher scores (negative slope)."""
    pts = {a.arm: (own_loss_delta(a), a.primary.delta) for a in arms
           if a.primary is not None and a.primary.delta is not None}  # fmt: skip
    pts = {k: v for k, v in pts.items() if v[0] is not None and math.isfinite(v[1])}
    for a in arms:
        if a.arm not in pts or "loss-task-disagreement" in a.flags or a.primary.ci is None:
            continue
        own = [a.domains[d] for d in a.candidate_mix if d in a.domains]
        if not own or not all(d.ci and d.ci[1] < 0 for d in own):
            continue
        others = [v for k, v in pts.items() if k != a.arm]
        if len(others) < MIN_FIT_ARMS:
            continue
        x, y = np.array([o[0] for o in others]), np.array([o[1] for o in others])
        if np.ptp(x) == 0:
            continue
        slope, icept = np.polyfit(x, y, 1)
        predicted = float(icept + slope * pts[a.arm][0])
        if slope < 0 and predicted > 0 and a.primary.ci[1] < predicted:
            a.flags.append("loss-task-disagreement")
            if "loss-only-gain" in a.flags:
                a.flags.remove("loss-only-gain")
            a.primary.loss_predicted = predicted
