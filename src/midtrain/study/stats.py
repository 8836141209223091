"""The statistics of a study: the training run is the unit of replication.

Every run r of group g (the control or one arm) is scored on the same eval examples i, giving a
matrix Y[r, i] per task (or domain, or metric). The model behind the intervals is

    Y[r, i] = mu + a_g + u_r + e_i + (ae)_{g,i} + eps_{r,i}

with u_r the run's own noise (its data order: arms and controls see different streams, so pairing
by seed does not cancel it), e_i the example's difficulty (common to all runs: it cancels in every
difference), (ae)_{g,i} how the group's effect varies from example to example, and eps the rest.
For an arm a against the control c the estimate is D = mean score of a's runs - mean score of c's
runs, with

    Var(D) = (sigma_u^2 + sigma_eps^2 / n) (1/n_a + 1/n_c)  +  Var_i((ae)_a,i - (ae)_c,i) / n

- The first term is estimated from the per-run scores S_r = mean_i Y[r, i], pooled over every
  group of the study (control and arms): s_p^2 = sum_g sum_r (S_r - mean_g S)^2 / (N - G), with
  N - G degrees of freedom. With one run per group there are none: no interval, no verdict.
- The second term (example-to-example variation of the effect, i.e. "would it hold on other
  examples of the task") is estimated from the per-example differences of group means, minus what
  eps already contributes to them, and is never negative.
- The interval is D +- t_{df, 1-alpha/2} * SE, df by Welch-Satterthwaite from the two terms.

Several tasks enter a primary score as their mean: S_r is then the run's mean over tasks, and the
example terms of the tasks add with weight 1/T^2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

POWER = 0.8


@dataclass(frozen=True)
class Quantity:
    """One scored quantity of a study: per group (name -> [runs, examples]) on common examples."""

    groups: dict[str, np.ndarray]

    @property
    def n_examples(self) -> int:
        return next(iter(self.groups.values())).shape[1]

    def run_scores(self) -> dict[str, np.ndarray]:
        return {g: y.mean(axis=1) for g, y in self.groups.items()}


@dataclass(frozen=True)
class Pooled:
    """Run-to-run variance of per-run scores pooled over all groups, and its degrees of freedom."""

    var: float
    df: int

    @property
    def sd(self) -> float:
        return math.sqrt(self.var) if self.df > 0 else math.nan

    def sd_interval(self, confidence: float) -> tuple[float, float]:
        """A chi-square interval for the run-to-run standard deviation."""
        if self.df <= 0:
            return (math.nan, math.nan)
        a = 1 - confidence
        lo = math.sqrt(self.df * self.var / sps.chi2.ppf(1 - a / 2, self.df))
        hi = math.sqrt(self.df * self.var / sps.chi2.ppf(a / 2, self.df))
        return (lo, hi)


def pooled(scores: Sequence[np.ndarray]) -> Pooled:
    """Pooled within-group variance of per-run scores (one array of run scores per group)."""
    ss = sum(float(((s - s.mean()) ** 2).sum()) for s in scores if len(s) > 1)
    df = sum(len(s) - 1 for s in scores)
    return Pooled(ss / df if df > 0 else math.nan, df)


def residual_var(groups: Sequence[np.ndarray]) -> tuple[float, int]:
    """Pooled run x example residual variance (two-way decomposition within each group)."""
    ss, df = 0.0, 0
    for y in groups:
        r, n = y.shape
        if r < 2 or n < 2:
            continue
        res = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + y.mean()
        ss += float((res**2).sum())
        df += (r - 1) * (n - 1)
    return (ss / df if df > 0 else 0.0), df


@dataclass(frozen=True)
class Contrast:
    """An arm minus the control on one quantity (or on a mean of several)."""

    delta: float
    se: float
    df: float
    confidence: float
    pool: Pooled  # run-to-run variance of per-run scores, pooled over the study's groups
    run_var: float  # the run-to-run part of se^2: pool.var * (1/n_arm + 1/n_control)
    example_var: float  # the example-to-example part of se^2

    @property
    def decidable(self) -> bool:
        return self.df > 0 and math.isfinite(self.se)

    @property
    def t(self) -> float:
        return self.delta / self.se if self.se > 0 else math.copysign(math.inf, self.delta or 1.0)

    @property
    def ci(self) -> list[float]:
        if not self.decidable:
            return [math.nan, math.nan]
        h = sps.t.ppf(0.5 + self.confidence / 2, self.df) * self.se
        return [self.delta - h, self.delta + h]

    @property
    def p(self) -> float:
        """Two-sided p-value of delta = 0."""
        if not self.decidable:
            return math.nan
        return float(2 * sps.t.sf(abs(self.t), self.df))

    def mde(self, power: float = POWER) -> float:
        """The smallest true effect this contrast detects with probability `power`."""
        if not self.decidable:
            return math.nan
        q = sps.t.ppf(0.5 + self.confidence / 2, self.df) + sps.t.ppf(power, self.df)
        return float(q * self.se)


def contrast(
    arm: Sequence[Quantity] | Quantity, arm_group: str, control_group: str, confidence: float
) -> Contrast:
    """`arm_group` minus `control_group` on the mean of the quantities (tasks) given.

    Run-to-run variance is pooled over every group of the quantities; the example term of each
    quantity comes from that quantity's own examples.
    """
    qs = [arm] if isinstance(arm, Quantity) else list(arm)
    k = len(qs)
    groups = list(qs[0].groups)
    run_scores = {g: sum(q.run_scores()[g] for q in qs) / k for g in groups}
    pool = pooled(list(run_scores.values()))
    n_a, n_c = len(run_scores[arm_group]), len(run_scores[control_group])
    delta = float(run_scores[arm_group].mean() - run_scores[control_group].mean())
    w = 1.0 / n_a + 1.0 / n_c
    run_var = pool.var * w if pool.df > 0 else math.nan
    ex_var, ex_df = 0.0, 0
    for q in qs:
        ya, yc = q.groups[arm_group], q.groups[control_group]
        d = ya.mean(axis=0) - yc.mean(axis=0)
        eps, _ = residual_var(list(q.groups.values()))
        het = max(0.0, float(d.var(ddof=1)) - eps * w) if len(d) > 1 else 0.0
        ex_var += het / q.n_examples / k**2
        ex_df += q.n_examples - 1
    var = run_var + ex_var
    if pool.df <= 0:
        return Contrast(delta, math.nan, 0, confidence, pool, math.nan, ex_var)
    parts = run_var**2 / pool.df + (ex_var**2 / ex_df if ex_df > 0 else 0.0)
    df = var**2 / parts if parts > 0 else float(pool.df)
    return Contrast(delta, math.sqrt(var), df, confidence, pool, run_var, ex_var)


def seeds_needed(c: Contrast, effect: float, groups: int, limit: int = 64) -> int | None:
    """Seeds per arm and per control for a true `effect` to be detected with 80% power (at this
    study's run-to-run variance, example term and number of groups); None when `limit` seeds do
    not suffice or there is no variance estimate."""
    if not c.decidable or not effect > 0:
        return None
    for n in range(2, limit + 1):
        se = math.sqrt(c.pool.var * 2 / n + c.example_var)
        df = groups * (n - 1)
        q = sps.t.ppf(0.5 + c.confidence / 2, df) + sps.t.ppf(POWER, df)
        if q * se <= effect:
            return n
    return None


def adjust(p: Sequence[float], method: str) -> list[float]:
    """Multiple-testing adjusted p-values: 'none', 'holm' (family-wise) or 'bh' (false discovery)."""
    p = np.asarray(p, dtype=float)
    out = np.full(len(p), np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if method == "none" or m == 0:
        return list(p)
    order = ok[np.argsort(p[ok])]
    if method == "holm":
        adj = np.maximum.accumulate([(m - i) * p[j] for i, j in enumerate(order)])
    elif method == "bh":
        raw = [p[j] * m / (i + 1) for i, j in enumerate(order)]
        adj = np.minimum.accumulate(raw[::-1])[::-1]
    else:
        raise ValueError(f"unknown correction {method!r}")
    out[order] = np.minimum(1.0, adj)
    return list(out)
