"""What a design can detect: seeds needed for a planned effect at a contrast's noise, a design's
degrees of freedom and minimum detectable effect (`study run --dry-run`), and what pairing buys
(how much an arm and its control share, per design). The intervals themselves are `contrast.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

from midtrain.stats.contrast import POWER, RHO_FLOOR, Contrast


def seeds_needed(c: Contrast, effect: float | None, limit: int = 64) -> int | None:
    """Seeds per arm and per control for a true `effect` (the study's planned minimum effect,
    never the observed delta) to be detected with 80% power at this contrast's run noise, example
    term and design (its df grow in proportion to seeds - 1); None when `limit` seeds do not
    suffice or there is no noise estimate."""
    if not c.decidable or effect is None or not effect > 0 or c.seeds < 2:
        return None
    df_per_seed = c.noise.df / (c.seeds - 1)
    for n in range(2, limit + 1):
        se = math.sqrt(c.noise.var / n + c.example_var)
        df = df_per_seed * (n - 1)
        q = sps.t.ppf(0.5 + c.confidence / 2, df) + sps.t.ppf(POWER, df)
        if q * se <= effect:
            return n
    return None


def design_df(arms: int, seeds: int) -> float:
    """Degrees of freedom of a design's pooled paired differences: `arms` arms with `seeds`
    complete seeds, sharing one control (rho = 1/2)."""
    return arms * (seeds - 1) / (1 + (arms - 1) * RHO_FLOOR**2)


def mde_factor(arms: int, seeds: int, confidence: float, power: float = POWER) -> float:
    """The minimum detectable effect of a design of `arms` arms and `seeds` seeds in units of the
    run noise s (one run's own, var(arm - control) = 2 s^2): (t(df, 1-alpha/2) + t(df, power)) *
    sqrt(2 / seeds), df = design_df(arms, seeds)."""
    df = design_df(arms, seeds)
    if df <= 0:
        return math.inf
    q = sps.t.ppf(0.5 + confidence / 2, df) + sps.t.ppf(power, df)
    return float(q * math.sqrt(2 / seeds))


@dataclass(frozen=True)
class Pairing:
    """How much an arm and its control share, from per-run scores of one design.

    `sphericity`: the mean squared seed-deviation of arm - control over that of arm - arm' (1
    when the control is exchangeable with the arms, as the paired-stream design intends);
    `correlation`: 1 - var(arm - control) / (2 var(one run)), the arm-control correlation that
    pairing buys (0 for independent runs); `diff_sd`, `run_sd`: the two sds behind it."""

    sphericity: float | None
    correlation: float | None
    diff_sd: float | None
    run_sd: float | None
    arms: int
    seeds: int
    arm_arm_sd: float | None = None


def pairing(scores: dict[str, dict[int, float]], control: str) -> Pairing:
    """`scores[group][seed]`: per-run scores of the control and the arms of one design."""
    ctrl = scores[control]
    arms = [g for g in scores if g != control]
    seeds = sorted(set(ctrl).intersection(*(scores[a] for a in arms))) if arms else []
    if len(seeds) < 2 or not arms:
        return Pairing(None, None, None, None, len(arms), len(seeds))

    def var(x: list[float]) -> float:
        return float(np.var(x, ddof=1))

    ac = float(np.mean([var([scores[a][s] - ctrl[s] for s in seeds]) for a in arms]))
    aa = [var([scores[a][s] - scores[b][s] for s in seeds])
          for i, a in enumerate(arms) for b in arms[i + 1 :]]  # fmt: skip
    one = float(np.mean([var([scores[g][s] for s in seeds]) for g in scores]))
    return Pairing(
        sphericity=ac / float(np.mean(aa)) if aa and np.mean(aa) > 0 else None,
        correlation=1 - ac / (2 * one) if one > 0 else None,
        diff_sd=math.sqrt(ac), run_sd=math.sqrt(one), arms=len(arms), seeds=len(seeds),
        arm_arm_sd=math.sqrt(float(np.mean(aa))) if aa else None,
    )  # fmt: skip
