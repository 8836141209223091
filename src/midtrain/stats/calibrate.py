"""The statistics of `midtrain bench calibrate`: false decisions and misses of A/A studies.

Every arm of an A/A study is null (bench/calibrate.py runs them), so every include or reject is a
false decision and every interval that misses 0 a miss; rates come with exact (Clopper-Pearson)
95% intervals, and the false-decision rate also with a bootstrap over whole studies (their arms
share controls). `CalibrationSettings` is the calibration's design.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel
from scipy import stats as sps

from midtrain.study.results import ArmResult, StudyResult


class CalibrationSettings(BaseModel):
    studies: int = 4
    shards: int = 10
    seeds: int = 2
    fractions: list[float] = [0.3]  # every null candidate at each of these shares
    cpt: bool = False  # also every null candidate's continued-pretraining arm (100% a base shard)
    paired: bool = True  # study paired_streams (common random numbers)
    first_seed: int = 0  # seeds of study i: first_seed + i * seeds ...
    reuse: list[str] = []  # study folders whose identical finished runs are linked
    guards: bool = False  # a guard on every base domain (tolerance guard_tolerance bpb)
    guard_tolerance: float = 0.01
    auto_seeds: bool = False  # seeds = "auto" up to max_seeds (group-sequential looks)
    max_seeds: int = 3
    select: str = "all"  # eval.select: all | snr
    correction: str = "holm"
    tokens: int | None = None  # per run (default: half the demo's anneal, or the study file's)
    eval_limit: int | None = None  # examples per task (default: 100 on the demo world)
    workers: int = 1


class Rate(BaseModel):
    """k events in n trials, with a 95% Clopper-Pearson interval (Monte-Carlo error)."""

    k: int
    n: int
    rate: float | None
    ci: list[float] | None


def rate(k: int, n: int) -> Rate:
    if n == 0:
        return Rate(k=0, n=0, rate=None, ci=None)
    lo = 0.0 if k == 0 else float(sps.beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(0.975, k + 1, n - k))
    return Rate(k=k, n=n, rate=k / n, ci=[lo, hi])


class DesignRate(BaseModel):
    """False decisions and primary coverage of the null arms of one design."""

    null_arms: int
    false_decisions: int
    false_decision_rate: Rate
    coverage: Rate
    domain_coverage: Rate
    sphericity: list[float | None]  # per study
    correlation: list[float | None]  # arm-control correlation of the primary, per study
    # pooled over studies (mean squares), far less noisy than one study's 2-seed values
    pooled_sphericity: float | None = None
    pooled_correlation: float | None = None
    diff_sd: float | None = None  # sd of arm - control over seeds
    median_half_width: float | None = None  # of the arms' primary intervals
    mde_2_seeds: float | None = None  # the primary's minimum detectable effect at 2 seeds


class CalibrationResult(BaseModel):
    null_arms: int
    false_decisions: int
    false_include: int
    false_reject: int
    false_decision_rate: Rate
    false_decision_bootstrap: list[float] | None = None  # 95% cluster bootstrap over studies
    familywise: Rate | None = None  # studies with at least one false decision
    designs: dict[str, DesignRate] = {}
    settings: CalibrationSettings | None = None  # the design that gave these rates
    coverage: Rate  # primary intervals that contain 0
    task_coverage: Rate  # per-task intervals (primary metric) that contain 0
    acc_coverage: Rate  # per-task accuracy intervals that contain 0
    domain_coverage: Rate  # per-domain bits-per-byte intervals that contain 0
    nominal: float  # the stated error rate: 1 - confidence
    run_sd: list[float | None]  # each study's pooled run-to-run sd of the primary
    studies: int
    shards: int
    seeds: int
    tokens: int
    wall_s: float
    note: str = (
        "null arms of one study share its control runs, so their decisions are correlated; "
        "studies are independent (disjoint seeds)"
    )


def _covers(ci: list[float] | None) -> bool:
    return ci is not None and all(math.isfinite(c) for c in ci) and ci[0] <= 0 <= ci[1]


def _design(a: ArmResult) -> str:
    return "cpt" if a.cpt else f"{a.fraction:g}"


def summarise(results: list[StudyResult], s: CalibrationSettings, tokens: int,
              wall: float) -> CalibrationResult:  # fmt: skip
    arms = [a for r in results for a in r.arms if a.primary is not None]
    inc = sum(a.verdict == "include" for a in arms)
    rej = sum(a.verdict == "reject" for a in arms)
    tasks = [t for a in arms for t in a.tasks.values()]
    doms = [d for a in arms for d in a.domains.values()]
    per_study = [[a.verdict in ("include", "reject") for a in r.arms if a.primary] for r in results]
    return CalibrationResult(
        null_arms=len(arms), false_decisions=inc + rej, false_include=inc, false_reject=rej,
        false_decision_rate=rate(inc + rej, len(arms)),
        false_decision_bootstrap=cluster_bootstrap(per_study),
        familywise=rate(sum(any(x) for x in per_study), len(per_study)),
        designs=_designs(results),
        coverage=rate(sum(_covers(a.primary.ci) for a in arms), len(arms)),
        task_coverage=rate(sum(_covers(t.ci) for t in tasks), len(tasks)),
        acc_coverage=rate(sum(_covers(t.acc_ci) for t in tasks if t.acc_ci), sum(1 for t in tasks if t.acc_ci)),
        domain_coverage=rate(sum(_covers(d.ci) for d in doms), len(doms)),
        nominal=round(1 - results[0].confidence, 6) if results else 0.05,
        run_sd=[r.control.noise_floor.primary_sd if r.control.noise_floor else None for r in results],
        studies=s.studies, shards=s.shards, seeds=s.seeds, tokens=tokens, wall_s=round(wall, 1),
        settings=s,
    )  # fmt: skip


def _designs(results: list[StudyResult]) -> dict[str, DesignRate]:
    out: dict[str, DesignRate] = {}
    keys = sorted({_design(a) for r in results for a in r.arms if a.primary})
    for key in keys:
        arms = [a for r in results for a in r.arms if a.primary and _design(a) == key]
        false = sum(a.verdict in ("include", "reject") for a in arms)
        doms = [d for a in arms for d in a.domains.values()]
        pairs = [r.method.pairing.get(key) for r in results]
        pooled = _pooled(pairs, results[0].confidence if results else 0.95)
        out[key] = DesignRate(
            null_arms=len(arms), false_decisions=false, false_decision_rate=rate(false, len(arms)),
            coverage=rate(sum(_covers(a.primary.ci) for a in arms), len(arms)),
            domain_coverage=rate(sum(_covers(d.ci) for d in doms), len(doms)),
            sphericity=[p.sphericity if p else None for p in pairs],
            correlation=[p.correlation if p else None for p in pairs],
            median_half_width=float(np.median([(a.primary.ci[1] - a.primary.ci[0]) / 2
                                               for a in arms if a.primary.ci])) if arms else None,
            **pooled,
        )  # fmt: skip
    return out


def _pooled(pairs: list, confidence: float) -> dict[str, float | None]:
    """Sphericity, correlation, diff sd and 2-seed MDE from the studies' mean squares."""
    from midtrain.stats.power import mde_factor

    ok = [p for p in pairs if p and p.diff_sd is not None and p.run_sd]
    if not ok:
        return {}
    ac = float(np.mean([p.diff_sd**2 for p in ok]))
    one = float(np.mean([p.run_sd**2 for p in ok]))
    aa = [p.arm_arm_sd**2 for p in ok if p.arm_arm_sd is not None]
    arms = max(p.arms for p in ok)
    return {
        "pooled_sphericity": ac / float(np.mean(aa)) if aa and np.mean(aa) > 0 else None,
        "pooled_correlation": 1 - ac / (2 * one),
        "diff_sd": math.sqrt(ac),
        # mde_factor is in units of one run's noise s with var(arm - control) = 2 s^2
        "mde_2_seeds": mde_factor(arms, 2, confidence) * math.sqrt(ac / 2),
    }


def cluster_bootstrap(per_study: list[list[bool]], resamples: int = 2000,
                      seed: int = 0) -> list[float] | None:  # fmt: skip
    """A 95% percentile interval of the per-arm false-decision rate resampling whole studies (the
    arms of a study share its control, so their decisions are not independent)."""
    if len(per_study) < 2 or not any(per_study):
        return None
    rng = np.random.default_rng(seed)
    k = np.array([sum(x) for x in per_study], dtype=float)
    n = np.array([len(x) for x in per_study], dtype=float)
    idx = rng.integers(0, len(per_study), size=(resamples, len(per_study)))
    rates = k[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1)
    return [float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))]
