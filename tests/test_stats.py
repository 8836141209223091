"""The study statistics on simulated data with known effects: intervals cover at their stated rate
with 2-5 seeds, null arms are decided no more often than the error rate, no verdict without
replication, and the multiple-testing corrections."""

from __future__ import annotations

import math

import numpy as np
import pytest

from midtrain.stats.contrast import Quantity, adjust, contrast, pooled
from midtrain.stats.power import seeds_needed

EFFECTS = {"control": 0.0, "null": 0.0, "small": 0.05, "big": 0.3}


def simulate(rng, seeds, n_ex=120, sigma_u=0.08, sigma_eps=0.4, sigma_ge=0.0, tasks=1,
             sigma_seed=0.2):  # fmt: skip
    """Per-task [runs, examples] matrices from the model in midtrain.stats.contrast.

    Runs of one seed share `sigma_seed` noise (the same start and data order); each run has its
    own `sigma_u`. The true effect of an arm is EFFECTS[arm] on the population of examples: the
    per-example interaction (sigma_ge) averages to zero over the population, not over the
    examples drawn.
    """
    out = []
    shared = rng.normal(0, sigma_seed, (seeds, 1))
    own = {g: rng.normal(0, sigma_u, (seeds, 1)) for g in EFFECTS}
    for t in range(tasks):
        n = n_ex + 17 * t
        difficulty = rng.normal(0, 1.0, n)
        groups = {}
        for g, a in EFFECTS.items():
            inter = rng.normal(0, sigma_ge, n)
            noise = rng.normal(0, sigma_eps, (seeds, n))
            groups[g] = a + shared + own[g] + difficulty + inter + noise
        out.append(Quantity(groups))
    return out


def coverage(seeds, reps=600, **kw):
    rng = np.random.default_rng(seeds * 1000 + int(kw.get("sigma_ge", 0) * 100))
    hits, n = 0, 0
    for _ in range(reps):
        qs = simulate(rng, seeds, **kw)
        for arm in ("null", "small", "big"):
            lo, hi = contrast(qs, arm, "control", 0.95).ci
            hits += lo <= EFFECTS[arm] <= hi
            n += 1
    return hits / n


@pytest.mark.parametrize("seeds", [2, 3, 5])
@pytest.mark.parametrize("sigma_ge", [0.0, 0.3])
def test_intervals_cover_the_true_effect_at_the_stated_rate(seeds, sigma_ge):
    # 1800 intervals: the Monte-Carlo standard error of a 95% rate is 0.005
    cov = coverage(seeds, sigma_ge=sigma_ge)
    assert 0.93 <= cov <= 0.975, cov


def test_primary_over_several_tasks_covers_too():
    assert 0.93 <= coverage(2, reps=400, tasks=3, sigma_ge=0.2) <= 0.975


def test_null_arms_with_two_seeds_are_decided_at_the_error_rate():
    """The old seed x example bootstrap decided ~half of the null arms whose two seeds agreed in
    sign; the pooled-run interval decides them at the stated 5%."""
    rng = np.random.default_rng(7)
    decided = n = 0
    for _ in range(800):
        qs = simulate(rng, 2)
        lo, hi = contrast(qs, "null", "control", 0.95).ci
        decided += lo > 0 or hi < 0
        n += 1
    rate = decided / n
    assert rate <= 0.05 + 2.6 * math.sqrt(0.05 * 0.95 / n), rate


def test_blocking_by_seed_cancels_the_shared_noise_but_not_the_runs_own():
    """With a large shared seed effect the interval stays as narrow as the runs' own noise allows;
    with none it is as wide as that noise requires."""
    rng = np.random.default_rng(3)
    widths = {}
    for shared in (0.0, 1.0):
        w = [np.diff(contrast(simulate(rng, 3, sigma_seed=shared), "null", "control", 0.95).ci)[0]
             for _ in range(50)]  # fmt: skip
        widths[shared] = float(np.median(w))
    assert widths[1.0] == pytest.approx(widths[0.0], rel=0.25)
    assert 0.93 <= coverage(3, reps=300, sigma_seed=1.0, sigma_u=0.05) <= 0.975


def test_missing_runs_are_allowed_and_seeds_still_align():
    rng = np.random.default_rng(4)
    qs = simulate(rng, 3)
    q = qs[0]
    groups = {g: (y[[0, 2]] if g == "big" else y) for g, y in q.groups.items()}
    seeds = {g: ([0, 2] if g == "big" else [0, 1, 2]) for g in q.groups}
    c = contrast(Quantity(groups, seeds), "big", "control", 0.95)
    assert c.decidable and c.ci[0] < EFFECTS["big"] < c.ci[1]
    disjoint = {g: ([7, 8] if g == "big" else [0, 1, 2]) for g in q.groups}
    nope = contrast(Quantity(groups, disjoint), "big", "control", 0.95)
    assert not nope.decidable  # no seed in common with the others: not estimable


def test_one_run_per_group_gives_no_interval():
    rng = np.random.default_rng(0)
    c = contrast(simulate(rng, 1), "big", "control", 0.95)
    assert not c.decidable and math.isnan(c.ci[0]) and math.isnan(c.p) and math.isnan(c.mde())


def test_pooled_variance_uses_every_group_and_honest_df():
    p = pooled([np.array([1.0, 3.0]), np.array([2.0, 2.0, 5.0]), np.array([7.0])])
    assert p.df == 1 + 2 + 0
    assert p.var == pytest.approx((2.0 + 6.0) / 3)
    lo, hi = p.sd_interval(0.95)
    assert lo < p.sd < hi


def test_mde_and_seeds_needed_shrink_with_noise():
    rng = np.random.default_rng(1)
    noisy = contrast(simulate(rng, 2, sigma_u=0.2), "small", "control", 0.95)
    quiet = contrast(simulate(rng, 2, sigma_u=0.02), "small", "control", 0.95)
    assert quiet.mde() < noisy.mde()
    n_noisy, n_quiet = seeds_needed(noisy, 0.1), seeds_needed(quiet, 0.1)
    assert n_quiet is not None and (n_noisy is None or n_noisy > n_quiet)
    assert seeds_needed(noisy, 100.0) == 2
    assert seeds_needed(noisy, None) is None  # no planned effect: no post-hoc power


def test_corrections():
    p = [0.01, 0.04, 0.03, 0.5, float("nan")]
    holm = adjust(p, "holm")
    assert holm[:4] == pytest.approx([0.04, 0.09, 0.09, 0.5]) and math.isnan(holm[4])
    bh = adjust(p, "bh")
    assert bh[:4] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert adjust(p, "none")[:4] == p[:4]


# -- designs whose runs are not equally correlated (issue 25) ---------------------------------------


def design(rng, seeds, arms, rho_aa, rho_ac, n_ex=60, sigma_run=0.1, sigma_eps=0.3,
           sigma_ge=0.0, sigma_seed_ex=0.0):  # fmt: skip
    """Null arms whose per-run offsets have corr(arm, arm') = rho_aa and corr(arm, control) =
    rho_ac, optional effect heterogeneity over examples (sigma_ge, arm-specific) and a seed x
    example interaction that every run of a seed shares (sigma_seed_ex; it cancels in pairs)."""
    names = ["control"] + [f"a{k}" for k in range(arms)]
    cov = np.full((arms + 1, arms + 1), rho_aa)
    cov[0, :] = cov[:, 0] = rho_ac
    np.fill_diagonal(cov, 1.0)
    z = rng.multivariate_normal(np.zeros(arms + 1), cov, size=seeds) * sigma_run  # [seeds, groups]
    difficulty = rng.normal(0, 1.0, n_ex)
    seed_ex = rng.normal(0, sigma_seed_ex, (seeds, n_ex))
    groups = {}
    for g, name in enumerate(names):
        inter = rng.normal(0, sigma_ge, n_ex) if g else 0.0
        groups[name] = (z[:, [g]] + difficulty + inter + seed_ex
                        + rng.normal(0, sigma_eps, (seeds, n_ex)))  # fmt: skip
    return Quantity(groups), names[1:]


def null_coverage(draw, intervals: int = 2000) -> float:
    """The share of null arms' intervals (design of `draw()`, peers pooled) that contain 0."""
    hits = n = 0
    while n < intervals:
        q, peers = draw()
        for a in peers:
            lo, hi = contrast(q, a, "control", 0.95, peers).ci
            hits += lo <= 0 <= hi
            n += 1
    return hits / n


@pytest.mark.parametrize(
    ("rho_aa", "rho_ac", "arms"),
    [(0.8, 0.6, 10), (0.3, 0.6, 6)],  # arm-arm correlation above and below arm-control
)
def test_paired_intervals_cover_when_runs_are_not_equally_correlated(rho_aa, rho_ac, arms):
    """The old pooled interval assumed every run of a seed equally correlated (coverage 0.879
    in the first case); the paired differences do not need it. >= 2,000 intervals each."""
    rng = np.random.default_rng(int(rho_aa * 100) + arms)
    cov = null_coverage(lambda: design(rng, 2, arms, rho_aa, rho_ac))
    assert cov >= 0.93, cov


def test_seed_by_example_interaction_does_not_hide_the_example_term():
    """A seed x example interaction cancels in paired differences; estimating the example noise
    from unpaired residuals clipped the example term to 0 (coverage 0.906)."""
    rng = np.random.default_rng(11)
    cov = null_coverage(
        lambda: design(rng, 3, 4, 0.5, 0.5, sigma_ge=0.3, sigma_seed_ex=0.5, sigma_run=0.02)
    )
    assert cov >= 0.93, cov


def test_pooling_over_peers_narrows_intervals_with_honest_df():
    rng = np.random.default_rng(5)
    q, peers = design(rng, 2, 6, 0.5, 0.5)
    alone, pooled_ = (
        contrast(q, peers[0], "control", 0.95),
        contrast(q, peers[0], "control", 0.95, peers),
    )
    assert alone.noise.df == 1 and 1 < pooled_.noise.df < 6  # shared control: fewer than 6 df
    assert pooled_.df <= pooled_.noise.df + 1e-9 or pooled_.example_var > 0


def test_pairing_measures_sphericity_and_correlation():
    from midtrain.stats.power import pairing

    rng = np.random.default_rng(8)
    runs = rng.normal(size=(400, 4))
    sym = {g: {s: float(runs[s, k]) for s in range(400)} for k, g in enumerate("cabd")}
    p = pairing(sym, "c")
    assert p.sphericity == pytest.approx(1.0, abs=0.15) and p.correlation == pytest.approx(
        0, abs=0.1
    )
    shared = rng.normal(size=400)
    crn = {
        g: {s: float(shared[s] + 0.5 * runs[s, k]) for s in range(400)}
        for k, g in enumerate("cabd")
    }
    assert pairing(crn, "c").correlation == pytest.approx(0.8, abs=0.05)


def test_auto_seeds_at_the_null_spend_alpha_over_the_looks():
    """seeds = "auto" with O'Brien-Fleming-type spending: looks after 2..5 seeds, an arm stops
    when decided; null arms are decided no more often than alpha (+ Monte-Carlo error), and the
    last look's level is far above Bonferroni's alpha / 4."""
    from midtrain.stats.sequential import spending_levels

    info = (2 / 5, 3 / 5, 4 / 5, 1.0)
    levels = spending_levels(0.05, info)
    assert levels[-1] > 0.035 > 0.05 / 4 and levels == sorted(levels)
    rng = np.random.default_rng(21)
    decided = n = 0
    while n < 1500:
        q, peers = design(rng, 5, 4, 0.5, 0.5, n_ex=30)
        for a in peers:
            for k, level in enumerate(levels):
                keep = {g: y[: k + 2] for g, y in q.groups.items()}
                if contrast(Quantity(keep), a, "control", 0.95, peers).p < level:
                    decided += 1
                    break
            n += 1
    rate = decided / n
    assert rate <= 0.05 + 2.6 * math.sqrt(0.05 * 0.95 / n), rate


def test_bias_adjusted_estimate_pulls_an_early_stop_towards_zero():
    from midtrain.stats.sequential import bias_adjusted, spending_levels

    info = (2 / 5, 3 / 5, 4 / 5, 1.0)
    levels = spending_levels(0.05, info)
    early = bias_adjusted(0.6, 0.15, info, levels, 0)
    assert 0 < early < 0.6
    assert bias_adjusted(0.0, 0.15, info, levels, 0) == pytest.approx(0.0, abs=0.01)
