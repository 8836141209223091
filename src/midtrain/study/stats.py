"""The statistics of a study: the training run is the unit of replication.

Every run r of group g (the control or one arm) with data-order seed s is scored on the same eval
examples i, giving a matrix Y[r, i] per task (or domain, or metric). The model behind the
intervals is

    Y[r, i] = mu + a_g + b_s + u_r + e_i + (ae)_{g,i} + eps_{r,i}

- b_s is what runs of the same seed share: every run starts from the same checkpoint, and runs of
  one seed draw their common sources in the same order (an arm's base-mix part is a prefix of its
  control's). Runs of a seed form a block, and b_s cancels in every arm - control difference.
- u_r is the run's own noise (its candidate data, where the streams differ): it does not cancel and
  must be estimated. The per-run scores S_r = mean_i Y[r, i] are fitted with group and seed effects
  (a two-way, randomized-block model, by least squares so that missing runs are allowed); the
  residual variance s^2, pooled over every group of the study, has N - rank degrees of freedom
  (a complete study of G groups and n seeds: (G - 1)(n - 1)). With one run per group there are
  none: no interval and no verdict.
- e_i, the example's difficulty, is common to all runs and cancels; (ae)_{g,i}, how the effect
  varies from example to example ("would it hold on other examples of the task"), is estimated
  from the per-example differences of group means, minus what eps already contributes, and is
  never negative.

For an arm a against the control c, D = a_a - a_c (with complete blocks: the mean over seeds of
the arm's score minus the control's), and

    SE^2 = s^2 * v_ac + max(0, var_i(d_i) - s_eps^2 (1/n_a + 1/n_c)) / n

with v_ac the contrast's factor from the fit (2 / n for complete blocks of n seeds). The interval
is D +- t_{df, 1-alpha/2} * SE, df by Welch-Satterthwaite from the two terms. Several tasks
enter a primary score as their mean: S_r is then the run's mean over tasks, and the example terms
of the tasks add with weight 1/T^2.
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
    """One scored quantity of a study: per group (name -> [runs, examples]) on common examples,
    and each run's seed (default: the k-th run of every group has seed k)."""

    groups: dict[str, np.ndarray]
    seeds: dict[str, list[int]] | None = None

    @property
    def n_examples(self) -> int:
        return next(iter(self.groups.values())).shape[1]

    def run_scores(self) -> dict[str, np.ndarray]:
        return {g: y.mean(axis=1) for g, y in self.groups.items()}

    def run_seeds(self) -> dict[str, list[int]]:
        return self.seeds or {g: list(range(len(y))) for g, y in self.groups.items()}


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


@dataclass(frozen=True)
class BlockFit:
    """Per-run scores fitted with group and seed effects (least squares)."""

    groups: list[str]
    coef: np.ndarray  # [intercept, groups[1:]..., seeds[1:]...]
    xtx: np.ndarray
    xtx_inv: np.ndarray
    noise: Pooled  # the residual variance and its degrees of freedom

    def contrast(self, a: str, c: str) -> tuple[float, float]:
        """(estimate, variance factor) of group a minus group c; factor nan when not estimable."""
        vec = np.zeros(len(self.coef))
        for g, sign in ((a, 1.0), (c, -1.0)):
            k = self.groups.index(g)
            if k > 0:
                vec[k] += sign
        if not np.allclose(vec @ self.xtx_inv @ self.xtx, vec, atol=1e-8):
            return float("nan"), float("nan")  # the groups share no seed: not estimable
        return float(vec @ self.coef), float(vec @ self.xtx_inv @ vec)


def block_fit(scores: dict[str, np.ndarray], seeds: dict[str, list[int]]) -> BlockFit:
    """Least squares of per-run scores on group and seed effects (the first of each is the
    reference); the residual variance is the run-to-run noise that seeds do not share."""
    groups = list(scores)
    levels = sorted({s for g in groups for s in seeds[g]})
    y, rows = [], []
    for gi, g in enumerate(groups):
        for s, v in zip(seeds[g], scores[g], strict=True):
            x = np.zeros(len(groups) + len(levels) - 1)
            x[0] = 1.0
            if gi > 0:
                x[gi] = 1.0
            if (si := levels.index(s)) > 0:
                x[len(groups) - 1 + si] = 1.0
            rows.append(x)
            y.append(v)
    x_mat, y_vec = np.array(rows), np.array(y, dtype=np.float64)
    coef, _, rank, _ = np.linalg.lstsq(x_mat, y_vec, rcond=None)
    df = len(y_vec) - int(rank)
    rss = float(((y_vec - x_mat @ coef) ** 2).sum())
    noise = Pooled(rss / df if df > 0 else math.nan, df)
    xtx = x_mat.T @ x_mat
    return BlockFit(groups, coef, xtx, np.linalg.pinv(xtx), noise)


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
    noise: Pooled  # run-to-run variance not shared within a seed, pooled over the study's groups
    run_var: float  # the run-to-run part of se^2: noise.var times the contrast's factor
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

    The run-to-run noise comes from the block fit over every group of the quantities; the example
    term of each quantity from that quantity's own examples.
    """
    qs = [arm] if isinstance(arm, Quantity) else list(arm)
    k = len(qs)
    groups = list(qs[0].groups)
    run_scores = {g: sum(q.run_scores()[g] for q in qs) / k for g in groups}
    fit = block_fit(run_scores, qs[0].run_seeds())
    delta, factor = fit.contrast(arm_group, control_group)
    n_a, n_c = len(run_scores[arm_group]), len(run_scores[control_group])
    w = 1.0 / n_a + 1.0 / n_c
    ex_var, ex_df = 0.0, 0
    for q in qs:
        ya, yc = q.groups[arm_group], q.groups[control_group]
        d = ya.mean(axis=0) - yc.mean(axis=0)
        eps, _ = residual_var(list(q.groups.values()))
        het = max(0.0, float(d.var(ddof=1)) - eps * w) if len(d) > 1 else 0.0
        ex_var += het / q.n_examples / k**2
        ex_df += q.n_examples - 1
    noise = fit.noise
    if noise.df <= 0 or not math.isfinite(factor):
        return Contrast(delta, math.nan, 0, confidence, noise, math.nan, ex_var)
    run_var = noise.var * factor
    var = run_var + ex_var
    parts = run_var**2 / noise.df + (ex_var**2 / ex_df if ex_df > 0 else 0.0)
    df = var**2 / parts if parts > 0 else float(noise.df)
    return Contrast(delta, math.sqrt(var), df, confidence, noise, run_var, ex_var)


def seeds_needed(c: Contrast, effect: float, groups: int, limit: int = 64) -> int | None:
    """Seeds per arm and per control (complete blocks) for a true `effect` to be detected with
    80% power at this study's run-to-run noise, example term and number of groups; None when
    `limit` seeds do not suffice or there is no noise estimate."""
    if not c.decidable or not effect > 0:
        return None
    for n in range(2, limit + 1):
        se = math.sqrt(c.noise.var * 2 / n + c.example_var)
        df = (groups - 1) * (n - 1)
        q = sps.t.ppf(0.5 + c.confidence / 2, df) + sps.t.ppf(POWER, df)
        if q * se <= effect:
            return n
    return None


def mde_factor(groups: int, seeds: int, confidence: float, power: float = POWER) -> float:
    """The minimum detectable effect of a complete-block study in units of the run noise s:
    (t(df, 1-alpha/2) + t(df, power)) * sqrt(2 / seeds), df = (groups - 1)(seeds - 1)."""
    df = (groups - 1) * (seeds - 1)
    if df <= 0:
        return math.inf
    q = sps.t.ppf(0.5 + confidence / 2, df) + sps.t.ppf(power, df)
    return float(q * math.sqrt(2 / seeds))


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
