"""Paired bootstrap, verdicts, guards and flags on synthetic per-example records."""

from __future__ import annotations

import numpy as np
import pytest

from midtrain.eval.results import DomainExample, Examples, TaskExample
from midtrain.study.analysis import PairedBootstrap, analyse_arm, mde
from midtrain.study.config import Guard

TASKS = ["t1", "t2"]
DOMAINS = ["web", "math"]


def make_eval(rng, task_shift=0.0, dom_shift=None, n=150, base=None):
    """Per-example values = a fixed per-example difficulty + seed noise + a shift."""
    dom_shift = dom_shift or {}
    base = base if base is not None else np.random.default_rng(123)
    diff_t = base.normal(-2.0, 0.5, size=n)
    diff_d = base.normal(3.0, 0.3, size=n)
    recs = [
        TaskExample(
            task=t,
            doc_id=i,
            gold_logprob_per_byte=float(diff_t[i] + task_shift + rng.normal(0, 0.05)),
            acc=float(rng.random() < 0.25 + task_shift),
        )
        for t in TASKS
        for i in range(n)
    ]
    recs += [
        DomainExample(
            domain=d,
            doc_id=i,
            nll=1.0,
            tokens=1,
            bytes=1,
            bpb=float(diff_d[i] + dom_shift.get(d, 0.0) + rng.normal(0, 0.01)),
        )  # fmt: skip
        for d in DOMAINS
        for i in range(n)
    ]
    return Examples(recs)


def analyse(arms, ctrls, guards=(), sources=("math",), tasks=TASKS):
    return analyse_arm(
        arms,
        ctrls,
        tasks=list(tasks),
        domains=DOMAINS,
        primary="gold_logprob_per_byte",
        candidate_sources=list(sources),
        guards=list(guards),
        iters=1000,
        confidence=0.95,
    )


def pair(shift=0.0, dom_shift=None, seeds=(0, 1)):
    ctrls = [make_eval(np.random.default_rng(10 + s)) for s in seeds]
    arms = [make_eval(np.random.default_rng(20 + s), shift, dom_shift) for s in seeds]
    return arms, ctrls


def test_arm_identical_to_control_is_inconclusive_with_ci_around_zero():
    ctrls = [make_eval(np.random.default_rng(s)) for s in (0, 1)]
    arms = [make_eval(np.random.default_rng(s)) for s in (0, 1)]  # same data, same noise
    res = analyse(arms, ctrls)
    assert res.verdict == "inconclusive"
    lo, hi = res.primary.ci
    assert lo <= 0.0 <= hi
    assert res.primary.delta == pytest.approx(0.0, abs=1e-12)
    assert res.primary.mde >= 0.0


def test_pure_noise_arm_is_inconclusive_and_reports_mde():
    res = analyse(*pair(0.0))
    assert res.verdict == "inconclusive"
    assert res.primary.ci[0] < 0 < res.primary.ci[1]
    assert res.primary.mde > 0
    assert res.suggestion


def test_clear_improvement_is_included_and_clear_harm_rejected():
    better = analyse(*pair(+0.2))
    assert better.verdict == "include"
    assert better.primary.ci[0] > 0
    worse = analyse(*pair(-0.2))
    assert worse.verdict == "reject"
    assert worse.primary.ci[1] < 0


def test_verdict_flips_with_the_size_of_the_effect():
    verdicts = [analyse(*pair(s)).verdict for s in (-0.3, 0.0, 0.3)]
    assert verdicts == ["reject", "inconclusive", "include"]


def test_broken_guard_rejects_an_otherwise_good_arm():
    arms, ctrls = pair(+0.2, dom_shift={"web": 0.2})
    res = analyse(arms, ctrls, guards=[Guard(domain="web", tolerance=0.05)])
    assert res.guards[0].status == "broken"
    assert res.verdict == "reject"
    ok = analyse(arms, ctrls, guards=[Guard(domain="web", tolerance=0.5)])
    assert ok.guards[0].status == "ok"
    assert ok.verdict == "include"


def test_task_guard_uses_higher_is_better():
    # t1 improves a lot, t2 regresses a little: overall better, but t2 is guarded with 0 tolerance.
    ctrls = [make_eval(np.random.default_rng(10 + s)) for s in (0, 1)]
    arms = [make_eval(np.random.default_rng(20 + s), 0.0) for s in (0, 1)]
    for a in arms:
        for rec in a.tasks["t1"].values():
            rec.gold_logprob_per_byte += 0.5
        for rec in a.tasks["t2"].values():
            rec.gold_logprob_per_byte -= 0.1
    res = analyse(arms, ctrls, guards=[Guard(task="t2", tolerance=0.0)])
    assert res.primary.ci[0] > 0
    assert res.guards[0].status == "broken"
    assert res.verdict == "reject"


def test_loss_task_disagreement_flag():
    arms, ctrls = pair(0.0, dom_shift={"math": -0.3})
    res = analyse(arms, ctrls)
    assert res.domains["math"].ci[1] < 0
    assert "loss-task-disagreement" in res.flags
    agree = analyse(*pair(+0.2, dom_shift={"math": -0.3}))
    assert "loss-task-disagreement" not in agree.flags


def test_no_tasks_refuses_a_verdict():
    res = analyse(*pair(0.2), tasks=[])
    assert res.verdict == "no-verdict"
    assert "perplexity-only" in res.flags


def test_pairing_uses_only_examples_present_everywhere():
    arms, ctrls = pair(0.1)
    del arms[0].tasks["t1"][0]
    res = analyse(arms, ctrls)
    assert res.tasks["t1"].n_examples == 149
    assert res.tasks["t2"].n_examples == 150


def test_bootstrap_with_one_seed_only_resamples_examples():
    boot = PairedBootstrap(1, 500)
    d = np.random.default_rng(0).normal(1.0, 1.0, size=(1, 400))
    draws = boot.draws(d)
    assert abs(draws.mean() - d.mean()) < 0.05
    se = d.std() / np.sqrt(400)
    assert draws.std() == pytest.approx(se, rel=0.2)


def test_mde_scales_with_ci_width():
    assert mde([-0.1, 0.1], 0.95) == pytest.approx(2 * mde([-0.05, 0.05], 0.95))
    assert mde([-0.1, 0.1], 0.95) == pytest.approx((1.959964 + 0.841621) * 0.1 / 1.959964, rel=1e-4)
