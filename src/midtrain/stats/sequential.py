"""Group-sequential analysis for `seeds = "auto"`: alpha spent over the looks, and the delta of
an arm that stopped early, bias-adjusted.

An auto study analyses after 2, 3, ... max_seeds seeds and stops adding seeds to an arm once it is
decided. Deciding at every look at the full alpha would inflate the error; Bonferroni (alpha / looks)
is valid but needlessly strict at the last look. Lan-DeMets alpha spending with the O'Brien-Fleming
shape is strict early and close to alpha at the end; the family-wise error over all looks is alpha.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as sps


@functools.lru_cache(maxsize=32)
def spending_levels(alpha: float, info: tuple[float, ...]) -> list[float]:
    """Nominal two-sided levels of a group-sequential test with Lan-DeMets O'Brien-Fleming-type
    alpha spending, alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt t), at information fractions `info`
    (increasing, the last 1): look k rejects when its p-value is below the k-th level, and the
    chance of any rejection under the null over all looks is alpha (z statistics with correlation
    sqrt(t_j / t_k)). Far less conservative early than Bonferroni's alpha / looks."""
    z = sps.norm.ppf(1 - alpha / 2)
    spent = [2 - 2 * sps.norm.cdf(z / math.sqrt(t)) for t in info]
    bounds: list[float] = []
    for k in range(len(info)):
        target = spent[k] - (spent[k - 1] if k else 0.0)
        if k == 0:
            bounds.append(float(sps.norm.ppf(1 - target / 2)))
            continue
        corr = np.sqrt(np.minimum.outer(info[: k + 1], info[: k + 1])
                       / np.maximum.outer(info[: k + 1], info[: k + 1]))  # fmt: skip
        prev = np.array(bounds)
        mvn = sps.multivariate_normal(np.zeros(k + 1), corr, seed=0)

        def crossing(
            c: float, prev: np.ndarray = prev, mvn: Any = mvn, target: float = target
        ) -> float:
            inside_before = _box(mvn, np.append(prev, np.inf))
            return inside_before - _box(mvn, np.append(prev, c)) - target

        bounds.append(float(optimize.brentq(crossing, 0.5, 12.0, xtol=1e-6)))
    return [float(2 * sps.norm.sf(b)) for b in bounds]


def look_confidence(confidence: float, max_seeds: int, looks: int, look: int) -> float:
    """The confidence at analysis `look` (1-based) of `looks`: `confidence` for a single look;
    seeds = "auto" looks after 2, 3, ... `max_seeds` seeds, and alpha is spent over them with
    O'Brien-Fleming-type Lan-DeMets boundaries (information = seeds / max_seeds), so the
    family-wise error over all looks stays 1 - confidence. A study's final intervals have
    look = looks (`StudyConfig.looks`)."""
    if looks == 1:
        return confidence
    _, levels = look_levels(confidence, max_seeds, looks)
    return 1 - levels[min(look, looks) - 1]


def look_levels(
    confidence: float, max_seeds: int, looks: int
) -> tuple[tuple[float, ...], list[float]]:
    """The information of each look (seeds / max_seeds, from 2 seeds on) and its alpha level."""
    info = tuple((k + 2) / max_seeds for k in range(looks))
    return info, spending_levels(round(1 - confidence, 12), info)


def _box(mvn: Any, upper: np.ndarray) -> float:
    """P(|Z_j| < upper_j for all j)."""
    return float(mvn.cdf(upper, lower_limit=-upper))


def bias_adjusted(delta: float, se: float, info: Sequence[float], levels: Sequence[float],
                  stop: int, paths: int = 20000, seed: int = 0) -> float:  # fmt: skip
    """Whitehead's bias-adjusted estimate after a group-sequential test: the theta whose expected
    estimate at stopping equals the observed `delta`. The arm was analysed at information
    fractions `info[: stop + 1]` (the estimate's se at fraction t is se * sqrt(t_stop / t)) and
    stops at the first look whose two-sided p is below its level, else at the last; stopping early
    on a large estimate biases the naive delta away from 0, which this undoes (simulated paths,
    fixed seed: the same inputs give the same number)."""
    if not (math.isfinite(delta) and math.isfinite(se) and se > 0):
        return delta
    t = np.asarray(info, dtype=float)
    rng = np.random.default_rng(seed)
    steps = rng.normal(size=(paths, len(t))) * np.sqrt(np.diff(np.concatenate([[0.0], t])))
    w = np.cumsum(steps, axis=1) / t  # standard Brownian motion divided by information
    scale = se * math.sqrt(t[stop])  # the estimate's se at information 1
    crit = sps.norm.isf(np.asarray(levels, dtype=float) / 2)

    def expected(theta: float) -> float:
        est = theta + scale * w  # [paths, looks]
        z = est / (scale / np.sqrt(t))
        crossed = np.abs(z) >= crit
        crossed[:, -1] = True
        first = crossed.argmax(axis=1)
        return float(est[np.arange(paths), first].mean())

    lo, hi = delta - 8 * se, delta + 8 * se
    try:
        return float(optimize.brentq(lambda th: expected(th) - delta, lo, hi, xtol=1e-6 * se))
    except ValueError:
        return delta
