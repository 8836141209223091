"""Paired statistics for a study: each arm against the control of the same seed.

For every task and domain the unit of analysis is the per-example delta (arm - control) on the same
eval example, for each seed. Confidence intervals come from a bootstrap that resamples seeds and
eval examples together (paired: the same examples for arm and control), so both sources of noise
are in the interval. The verdict follows the rules in docs/studies.md ("Reading the verdict").
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Literal

import numpy as np

from midtrain.eval.results import Examples
from midtrain.study.config import Guard
from midtrain.study.results import (
    ArmAnalysis,
    DomainDelta,
    GuardResult,
    NoiseFloor,
    PrimaryResult,
    TaskDelta,
    TaskNoise,
)


def _matrix(
    arms: list[Examples], ctrls: list[Examples], group: Literal["tasks", "domains"], key: str,
    metric: str,
) -> np.ndarray | None:  # fmt: skip
    """Per-seed, per-example deltas [n_seeds, n_examples] over examples present in every run."""
    tables = [r.values(group, key, metric) for r in arms + ctrls]
    if any(t is None for t in tables):
        return None
    ids = set.intersection(*(set(t) for t in tables))
    if not ids:
        return None
    order = sorted(ids, key=lambda x: (str(type(x)), x))
    n = len(arms)
    arm_t, ctl_t = tables[:n], tables[n:]
    return np.array(
        [[a[d] - c[d] for d in order] for a, c in zip(arm_t, ctl_t, strict=True)],
        dtype=np.float64,
    )


class PairedBootstrap:
    """Joint bootstrap over seeds and examples with shared seed draws across all quantities."""

    def __init__(self, n_seeds: int, iters: int, rng_seed: int = 0):
        self.rng = np.random.default_rng(rng_seed)
        self.iters = iters
        self.seed_w = self.rng.multinomial(n_seeds, [1.0 / n_seeds] * n_seeds, size=iters) / n_seeds

    def draws(
        self, d: np.ndarray, resample_seeds: bool = True, resample_examples: bool = True
    ) -> np.ndarray:
        """Bootstrap distribution of the mean delta of `d` [n_seeds, n_examples]."""
        n_s, n_e = d.shape
        sw = self.seed_w if resample_seeds else np.full((self.iters, n_s), 1.0 / n_s)
        if resample_examples:
            ew = self.rng.multinomial(n_e, [1.0 / n_e] * n_e, size=self.iters) / n_e
        else:
            ew = np.full((self.iters, n_e), 1.0 / n_e)
        return np.einsum("bs,se,be->b", sw, d, ew)


def _ci(draws: np.ndarray, confidence: float) -> list[float]:
    a = (1 - confidence) / 2
    return [float(np.quantile(draws, a)), float(np.quantile(draws, 1 - a))]


def mde(ci: list[float], confidence: float, power: float = 0.8) -> float:
    """Minimum detectable effect at this noise: (z_{1-a/2} + z_power) x standard error."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    se = (ci[1] - ci[0]) / (2 * z)
    return (z + NormalDist().inv_cdf(power)) * se


def analyse_arm(
    arm_evals: list[Examples],
    ctrl_evals: list[Examples],
    *,
    tasks: list[str],
    domains: list[str],
    primary: str,
    candidate_sources: list[str],
    guards: list[Guard],
    iters: int,
    confidence: float,
) -> ArmAnalysis:
    """Deltas, CIs, guards, flags and the verdict for one arm (runs paired by seed)."""
    boot = PairedBootstrap(len(arm_evals), iters)
    task_deltas: dict[str, TaskDelta] = {}
    primary_draws, primary_mats, seed_only, ex_only = [], [], [], []
    for task in tasks:
        d = _matrix(arm_evals, ctrl_evals, "tasks", task, primary)
        if d is None:
            continue
        draws = boot.draws(d)
        primary_draws.append(draws)
        primary_mats.append(d)
        seed_only.append(boot.draws(d, resample_examples=False))
        ex_only.append(boot.draws(d, resample_seeds=False))
        rec = TaskDelta(delta=float(d.mean()), ci=_ci(draws, confidence), n_examples=d.shape[1],
                        n_seeds=d.shape[0], metric=primary)  # fmt: skip
        for metric in ("acc", "margin"):  # reported beside the primary metric
            m = _matrix(arm_evals, ctrl_evals, "tasks", task, metric)
            if m is not None:
                setattr(rec, f"{metric}_delta", float(m.mean()))
                setattr(rec, f"{metric}_ci", _ci(boot.draws(m), confidence))
        task_deltas[task] = rec
    domain_deltas: dict[str, DomainDelta] = {}
    for dom in domains:
        d = _matrix(arm_evals, ctrl_evals, "domains", dom, "bpb")
        if d is not None:
            ci = _ci(boot.draws(d), confidence)
            domain_deltas[dom] = DomainDelta(delta_bpb=float(d.mean()), ci=ci, n_docs=d.shape[1])
    out = ArmAnalysis(verdict="no-verdict", reason="", tasks=task_deltas, domains=domain_deltas)
    if not tasks:
        out.flags.append("perplexity-only")
        out.reason = "no downstream task is configured; per-domain loss alone cannot decide"
        _disagreement(out, candidate_sources, None)
        return out
    if not primary_draws:
        out.reason = "no task results were available for this arm"
        return out
    p = PrimaryResult(
        delta=float(np.mean([m.mean() for m in primary_mats])),
        ci=_ci(np.mean(primary_draws, axis=0), confidence),
        metric=primary,
        seed_ci=_ci(np.mean(seed_only, axis=0), confidence),
        example_ci=_ci(np.mean(ex_only, axis=0), confidence),
        mde=0.0,
    )
    p.mde = mde(p.ci, confidence)
    out.primary = p
    out.guards = [check_guard(g, out) for g in guards]
    _disagreement(out, candidate_sources, p)
    _verdict(out, p)
    return out


def check_guard(g: Guard, arm: ArmAnalysis) -> GuardResult:
    """broken: the CI lies wholly beyond the tolerance; at-risk: the point estimate does."""
    if g.task:
        rec = arm.tasks.get(g.task)
        sign, target = 1.0, f"task {g.task}"
        delta = rec.delta if rec else None
    else:
        rec = arm.domains.get(g.domain or "")
        sign, target = -1.0, f"domain {g.domain}"
        delta = rec.delta_bpb if rec else None
    if rec is None or delta is None:
        return GuardResult(target=target, tolerance=g.tolerance, status="missing")
    # In "higher is better" units: for bpb, lower is better, so flip the sign.
    signed, ci = sign * delta, sorted(sign * c for c in rec.ci)
    status = "broken" if ci[1] < -g.tolerance else "at-risk" if signed < -g.tolerance else "ok"
    return GuardResult(target=target, tolerance=g.tolerance, status=status, delta=delta, ci=rec.ci)


def _disagreement(out: ArmAnalysis, sources: list[str], p: PrimaryResult | None) -> None:
    """Flag the Marin HQ finding: own-domain loss improves significantly, tasks do not."""
    own = [out.domains[s] for s in sources if s in out.domains]
    if own and all(d.ci[1] < 0 for d in own) and (p is None or p.ci[0] <= 0):
        out.flags.append("loss-task-disagreement")


def _verdict(out: ArmAnalysis, p: PrimaryResult) -> None:
    statuses = {g.status for g in out.guards}
    lo, hi = p.ci
    if "broken" in statuses:
        broken = [g.target for g in out.guards if g.status == "broken"]
        out.verdict, out.reason = "reject", f"guard broken: {', '.join(broken)}"
    elif hi < 0:
        out.verdict, out.reason = "reject", "primary score worse with CI below 0"
    elif lo > 0 and not statuses & {"at-risk", "missing"}:
        out.verdict, out.reason = "include", "primary score better with CI above 0, guards hold"
    else:
        out.verdict = "inconclusive"
        if lo > 0:
            out.reason = "primary better, but a guard may regress beyond its tolerance"
        else:
            out.reason = f"CI contains 0; minimum detectable effect {p.mde:.3g}"
        out.suggestion = _suggest(p)


def _suggest(p: PrimaryResult) -> str:
    seed_w = p.seed_ci[1] - p.seed_ci[0]
    ex_w = p.example_ci[1] - p.example_ci[0]
    if seed_w >= ex_w:
        return "seed-to-seed noise dominates: add seeds (or anneal tokens, which also averages it)"
    return "eval-example noise dominates: evaluate more examples (raise eval.limit or add tasks)"


def noise_floor(ctrls: list[Examples], tasks: list[str], primary: str) -> NoiseFloor:
    """Seed-to-seed spread of the control: the smallest effect a single seed could show."""
    per_task = {}
    for t in tasks:
        vals = [c.score(t, primary) for c in ctrls if t in c.tasks]
        per_task[t] = TaskNoise(
            scores=vals, sd=float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        )
    prim = [primary_score(c, tasks, primary) for c in ctrls] if tasks else []
    sd = float(np.std(prim, ddof=1)) if len(prim) > 1 else None
    return NoiseFloor(metric=primary, control_scores=prim, primary_sd=sd, tasks=per_task)


def primary_score(ev: Examples, tasks: list[str], metric: str) -> float:
    vals = [ev.score(t, metric) for t in tasks if t in ev.tasks]
    return float(np.mean(vals)) if vals else float("nan")


def is_finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
