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
from scipy import optimize
from scipy import stats as sps

POWER = 0.8  # of a planned effect's detection (`mde`, power.py)


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


@dataclass(frozen=True)
class Contrast:
    """An arm minus the control on one quantity (or on a mean of several)."""

    delta: float
    se: float
    df: float
    confidence: float
    noise: Pooled  # run-to-run variance not shared within a seed, pooled over the study's groups
    run_var: float  # the run-to-run part of se^2: noise.var / seeds
    example_var: float  # the example-to-example part of se^2
    seeds: int = 0  # the seeds the arm and the control share

    @property
    def decidable(self) -> bool:
        return self.df > 0 and math.isfinite(self.se)

    @property
    def t(self) -> float:
        if self.se > 0:
            return self.delta / self.se
        return 0.0 if self.delta == 0 else math.copysign(math.inf, self.delta)

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
    arm: Sequence[Quantity] | Quantity, arm_group: str, control_group: str, confidence: float,
    peers: Sequence[str] | None = None, weights: Sequence[float] | None = None,
) -> Contrast:  # fmt: skip
    """`arm_group` minus `control_group` on a weighted sum of the quantities (default: their mean).

    The run-to-run variance comes from the paired differences d_s = S(peer, s) - S(control, s)
    of `peers` (the arms of the same design; default the arm alone), pooled over them; the
    example term of each quantity from its own per-example paired differences.
    """
    qs = [arm] if isinstance(arm, Quantity) else list(arm)
    w = np.full(len(qs), 1.0 / len(qs)) if weights is None else np.asarray(weights, float)
    seeds = qs[0].run_seeds()
    scores = {g: sum(wt * q.run_scores()[g] for wt, q in zip(w, qs, strict=True))
              for g in qs[0].groups}  # fmt: skip
    peers = [p for p in (peers or []) if p in scores]  # peers with runs of this quantity
    diffs = {p: paired_diffs(scores, seeds, p, control_group)
             for p in dict.fromkeys([arm_group, *peers])}  # fmt: skip
    d = diffs[arm_group]
    delta = float(np.mean(d)) if len(d) else math.nan
    ex_var, ex_df = example_term(qs, w, arm_group, control_group)
    noise = pooled_diffs(list(diffs.values()))
    if noise.df <= 0 or len(d) == 0:
        return Contrast(delta, math.nan, 0, confidence, noise, math.nan, ex_var, len(d))
    run_var = noise.var / len(d)
    var = run_var + ex_var
    df = combined_df(run_var, noise.df, ex_var, ex_df, confidence)
    return Contrast(delta, math.sqrt(var), df, confidence, noise, run_var, ex_var, len(d))


def combined_df(
    run_var: float, run_df: float, ex_var: float, ex_df: int, confidence: float
) -> float:
    """The df whose t quantile gives the half-width sqrt(t_run^2 run_var + t_ex^2 ex_var): each
    term scaled by its own quantile (Graybill and Wang's modified large-sample rule).

    Welch-Satterthwaite weights the two terms by their estimates; with 2-3 seeds the run term is
    often small by chance, the examples' df then take over and coverage falls (0.93 at 2 seeds in
    tests/test_stats.py). This rule is exact when either term is zero and conservative between.
    """
    if not run_var + ex_var > 0:
        return float(run_df)
    q = 0.5 + confidence / 2
    t_run = sps.t.ppf(q, run_df)
    t_ex = sps.t.ppf(q, ex_df) if ex_df > 0 else sps.norm.ppf(q)
    target = math.sqrt((t_run**2 * run_var + t_ex**2 * ex_var) / (run_var + ex_var))
    if target <= sps.t.ppf(q, 1e6) + 1e-12:
        return 1e6
    if target >= t_run:
        return float(run_df)
    return float(optimize.brentq(lambda df: sps.t.ppf(q, df) - target, run_df, 1e6))


def paired_diffs(
    scores: dict[str, np.ndarray], seeds: dict[str, list[int]], a: str, c: str
) -> np.ndarray:
    """S(a, s) - S(c, s) over the seeds both groups ran, in seed order."""
    ca = dict(zip(seeds[a], scores[a], strict=True))
    cc = dict(zip(seeds[c], scores[c], strict=True))
    return np.array([ca[s] - cc[s] for s in sorted(set(ca) & set(cc))], dtype=np.float64)


RHO_FLOOR = (
    0.5  # correlation of two arms' differences from a shared control when runs are exchangeable
)


def pooled_diffs(diffs: Sequence[np.ndarray]) -> Pooled:
    """The variance of per-seed paired differences pooled over arms, with Satterthwaite df.

    Arms of one study share their control, so their differences are correlated (rho = 1/2 when
    the runs of a seed are exchangeable; more when the arms share more with each other than with
    the control). The pooled variance is unbiased either way; its degrees of freedom shrink from
    sum(n_a - 1) to sum(n_a - 1) / (1 + (A - 1) rho^2), with rho estimated from the seeds the
    arms have in common and never taken below 1/2.
    """
    used = [d for d in diffs if len(d) > 1]
    df_raw = sum(len(d) - 1 for d in used)
    if df_raw == 0:
        return Pooled(math.nan, 0)
    var = sum(float(((d - d.mean()) ** 2).sum()) for d in used) / df_raw
    rho = max(RHO_FLOOR, _diff_correlation(used))
    df = df_raw / (1 + (len(used) - 1) * rho**2)
    return Pooled(var, df)


def _diff_correlation(diffs: Sequence[np.ndarray]) -> float:
    """The mean correlation of two arms' paired differences over their common seeds (0 when it
    cannot be estimated: one arm, or arms of different seed counts)."""
    n = {len(d) for d in diffs}
    if len(diffs) < 2 or len(n) != 1 or n.pop() < 3:
        return 0.0
    m = np.array([d - d.mean() for d in diffs])
    cov = m @ m.T
    v = np.diag(cov).mean()
    off = (cov.sum() - np.trace(cov)) / (len(diffs) * (len(diffs) - 1))
    return float(np.clip(off / v, 0.0, 0.95)) if v > 0 else 0.0


def example_term(qs: Sequence[Quantity], w: np.ndarray, a: str, c: str) -> tuple[float, int]:
    """How much the effect varies from example to example ("would it hold on other examples of
    the task"), from the per-example paired differences D[s, i] = Y(a, s, i) - Y(c, s, i): the
    variance over examples of their seed means, less what the seed x example residual (double
    centred, so seed x example variation that cancels in D is not counted) contributes; never
    negative. Returns (variance of the weighted sum, df)."""
    var, df = 0.0, 0
    for wt, q in zip(w, qs, strict=True):
        seeds = q.run_seeds()
        rows = dict(zip(seeds[a], q.groups[a], strict=True))
        crow = dict(zip(seeds[c], q.groups[c], strict=True))
        common = sorted(set(rows) & set(crow))
        if not common or q.n_examples < 2:
            continue
        dmat = np.array([rows[s] - crow[s] for s in common])
        n = len(common)
        resid = 0.0
        if n > 1:
            r = dmat - dmat.mean(axis=1, keepdims=True) - dmat.mean(axis=0, keepdims=True)
            resid = float(((r + dmat.mean()) ** 2).sum()) / ((n - 1) * (q.n_examples - 1))
        het = max(0.0, float(dmat.mean(axis=0).var(ddof=1)) - resid / n)
        var += wt**2 * het / q.n_examples
        df += q.n_examples - 1
    return var, df


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
