"""Verdicts, guards, flags, screening and corrections on synthetic per-example records."""

from __future__ import annotations

import numpy as np
import pytest

from midtrain.eval.results import DomainExample, Examples, TaskExample
from midtrain.stats import analysis
from midtrain.study.config import parse_study

TASKS = ["t1", "t2"]
DOMAINS = ["web", "math"]
N = 150


def make_eval(rng, task_shift=0.0, dom_shift=None, run_sd=0.02, acc_p=0.5, start=False):
    """Per-example values = a fixed per-example difficulty + run noise + example noise + a shift."""
    dom_shift = dom_shift or {}
    base = np.random.default_rng(123)
    diff_t, diff_d = base.normal(-2.0, 0.5, size=N), base.normal(3.0, 0.3, size=N)
    u = rng.normal(0, run_sd)  # the run's own offset: its data order
    recs = []
    for t in TASKS:
        shift = task_shift.get(t, 0.0) if isinstance(task_shift, dict) else task_shift
        for i in range(N):
            v = diff_t[i] + shift + u + rng.normal(0, 0.05)
            recs.append(TaskExample(task=t, doc_id=i, gold_logprob_per_byte=float(v), choices=4,
                                    acc=float(rng.random() < acc_p + shift)))  # fmt: skip
    for d in DOMAINS:
        for i in range(N):
            bpb = diff_d[i] + dom_shift.get(d, 0.0) + u / 10 + rng.normal(0, 0.01)
            recs.append(DomainExample(domain=d, doc_id=i, nll=1, tokens=1, bytes=1, bpb=float(bpb)))
    return Examples(recs)


def study(guards="", extra="", tasks=TASKS):
    text = {
        "checkpoint": "ckpt", "tokens": 8192, "stores": {d: d for d in DOMAINS},
        "base": {"web": 1.0}, "eval": {"tasks": list(tasks)},
        "candidates": [{"name": "arm", "mix": {"math": 1.0}}],
    }  # fmt: skip
    if guards:
        text["guards"] = guards
    text.update(extra or {})
    return parse_study(text)


def data(arm_kw=None, seeds=3, start=None, other_arms=None, seed0=0):
    rng = np.random.default_rng(seed0)
    groups = {
        "control": [make_eval(rng) for _ in range(seeds)],
        "arm@0.3": [make_eval(rng, **(arm_kw or {})) for _ in range(seeds)],
    }
    for name, kw in (other_arms or {}).items():
        groups[name] = [make_eval(rng, **kw) for _ in range(seeds)]
    return analysis.StudyData(groups, start, designs={g: "0.3" for g in groups if g != "control"})


def run(d, cfg=None, arm="arm@0.3", correction="none"):
    cfg = cfg or study()
    arms = {
        g: analysis.analyse_arm(d, g, cfg, list(cfg.eval.tasks), ["math"], 0.95)
        for g in d.groups
        if g != "control"
    }
    analysis.decide(list(arms.values()), correction, 0.05)
    return arms[arm]


def test_arm_identical_to_control_is_inconclusive_with_interval_around_zero():
    same = [make_eval(np.random.default_rng(s)) for s in (0, 1)]
    d = analysis.StudyData({"control": same, "arm@0.3": same}, None)
    res = run(d)
    assert res.verdict == "inconclusive"
    assert res.primary.delta == pytest.approx(0.0, abs=1e-12)
    assert res.primary.ci[0] <= 0 <= res.primary.ci[1] and res.primary.p == 1.0


def test_clear_improvement_is_included_and_clear_harm_rejected():
    better = run(data({"task_shift": 0.2}))
    assert better.verdict == "include" and better.primary.ci[0] > 0
    assert better.primary.p < 0.05 and len(better.primary.run_scores) == 3
    worse = run(data({"task_shift": -0.2}))
    assert worse.verdict == "reject" and worse.primary.ci[1] < 0


def test_verdict_flips_with_the_size_of_the_effect():
    verdicts = [run(data({"task_shift": s}, seed0=1)).verdict for s in (-0.3, 0.0, 0.3)]
    assert verdicts == ["reject", "inconclusive", "include"]


def test_one_seed_gives_no_verdict_and_says_why():
    res = run(data({"task_shift": 0.5}, seeds=1))
    assert res.verdict == "no-verdict" and "no run-to-run noise estimate" in res.reason
    assert res.primary.p is None


def test_run_noise_widens_the_interval_where_seeds_agree_by_chance():
    """Two seeds whose deltas agree in sign are not evidence by themselves: the interval is a
    t-interval on per-run scores, not the range of two deltas."""
    quiet = run(data({"task_shift": 0.02}, seed0=3))
    noisy_data = data({"task_shift": 0.02}, seed0=3)
    for sign, runs in zip((1, -1), noisy_data.groups.values(), strict=True):
        for k, ex in enumerate(runs):
            for t in TASKS:
                for rec in ex.tasks[t].values():
                    rec.gold_logprob_per_byte += sign * 0.3 * (k - 1)  # runs' own spread
    noisy = run(noisy_data)
    assert noisy.primary.ci[1] - noisy.primary.ci[0] > 3 * (
        quiet.primary.ci[1] - quiet.primary.ci[0]
    )
    assert noisy.verdict == "inconclusive" and "seeds" in noisy.suggestion


def test_broken_guard_rejects_an_otherwise_good_arm():
    d = data({"task_shift": 0.2, "dom_shift": {"web": 0.2}})
    res = run(d, study(guards=[{"domain": "web", "tolerance": 0.05}]))
    assert res.guards[0].status == "broken" and res.verdict == "reject"
    ok = run(d, study(guards=[{"domain": "web", "tolerance": 0.5}]))
    assert ok.guards[0].status == "ok" and ok.verdict == "include"


def test_task_guard_uses_higher_is_better():
    d = data({"task_shift": {"t1": 0.5, "t2": -0.1}})
    res = run(d, study(guards=[{"task": "t2", "tolerance": 0.0}]))
    assert res.primary.ci[0] > 0
    assert res.guards[0].status == "broken" and res.verdict == "reject"


def test_loss_flags_say_what_was_tested():
    """Own-domain loss significantly lower: with tasks significantly worse the signs disagree
    (loss-task-disagreement); with the task interval around 0 the gain is loss-only; with tasks
    better, neither."""
    only = run(data({"dom_shift": {"math": -0.3}}, seed0=1))
    assert only.domains["math"].ci[1] < 0 and only.primary.ci[0] < 0 < only.primary.ci[1]
    assert "loss-only-gain" in only.flags and "loss-task-disagreement" not in only.flags
    worse = run(data({"task_shift": -0.2, "dom_shift": {"math": -0.3}}))
    assert worse.primary.ci[1] < 0 and "loss-task-disagreement" in worse.flags
    agree = run(data({"task_shift": 0.2, "dom_shift": {"math": -0.3}}))
    assert not {"loss-task-disagreement", "loss-only-gain"} & set(agree.flags)


def test_no_tasks_refuses_a_verdict():
    res = run(data({"task_shift": 0.2}), study(tasks=[]))
    assert res.verdict == "no-verdict" and "perplexity-only" in res.flags


def test_pairing_uses_only_examples_present_everywhere():
    d = data({"task_shift": 0.1})
    del d.groups["arm@0.3"][0].tasks["t1"][0]
    res = run(d)
    assert res.tasks["t1"].n_examples == N - 1 and res.tasks["t2"].n_examples == N


def test_holm_and_bh_corrections_turn_a_marginal_include_among_nine_arms_inconclusive():
    arms = {f"a{i}@0.3": {"task_shift": 0.0} for i in range(8)}
    d = data({"task_shift": 0.05}, other_arms=arms, seed0=25, seeds=2)
    plain = run(d)
    assert plain.verdict == "include" and plain.primary.p == pytest.approx(0.025, abs=1e-3)
    assert plain.primary.p_adjusted == pytest.approx(plain.primary.p)
    for method in ("holm", "bh"):
        res = run(d, correction=method)
        assert res.primary.p_adjusted > 0.05 and res.verdict == "inconclusive"
        assert method in res.reason


def test_screening_flags_saturated_and_low_snr_tasks():
    rng = np.random.default_rng(2)
    start = make_eval(rng, task_shift={"t1": 0.5}, acc_p=0.5)
    for rec in start.tasks["t1"].values():
        rec.acc = 1.0  # t1 at ceiling on the start checkpoint
    for rec in start.tasks["t2"].values():
        rec.gold_logprob_per_byte -= 0.3  # the control's cooldown moves t2 well above the start
    d = data({"task_shift": {"t2": 0.3}}, start=start)
    cfg = study(extra={"eval": {"tasks": TASKS, "select": "snr"}})
    screen = {s.task: s for s in analysis.screen_tasks(d, cfg)}
    assert screen["t1"].saturated == "ceiling" and not screen["t1"].in_primary
    assert "saturated" in screen["t1"].reason
    assert screen["t2"].in_primary and screen["t2"].snr > 1 and screen["t2"].chance == 0.25
    keep_all = {s.task: s for s in analysis.screen_tasks(d, study())}
    assert all(s.in_primary for s in keep_all.values()) and keep_all["t1"].saturated == "ceiling"
    # the arms never enter the screen: another arm result leaves it unchanged
    d.groups["arm@0.3"] = data({"task_shift": {"t2": -5.0}}).groups["arm@0.3"]
    d._cache.clear()
    assert [s.model_dump() for s in analysis.screen_tasks(d, cfg)] == list(
        s.model_dump() for s in screen.values()
    )


def test_non_finite_values_never_reach_a_statistic():
    d = data({"task_shift": 0.2})
    bad = d.groups["arm@0.3"][1].tasks["t1"]
    for i in range(10):
        bad[i].gold_logprob_per_byte = float("nan") if i % 2 else float("inf")
    res = run(d)
    assert res.tasks["t1"].n_examples == N - 10  # dropped from every run, not averaged in
    assert all(np.isfinite(res.tasks["t1"].ci)) and np.isfinite(res.primary.delta)
    assert res.verdict == "include"


def test_select_snr_at_the_null_decides_at_the_error_rate():
    """Screening on the start and the control only: null arms are decided no more often than
    alpha (+ Monte-Carlo error); the old screen took its signal from the arms too (14.6%)."""
    import math

    decided = n = 0
    cfg = study(extra={"eval": {"tasks": TASKS, "select": "snr"}})
    for rep in range(60):
        rng = np.random.default_rng(1000 + rep)
        start = make_eval(rng, task_shift={"t1": -0.05, "t2": 0.0})
        arms = {f"n{i}@0.3": {} for i in range(4)}
        d = data(seeds=2, start=start, other_arms=arms, seed0=2000 + rep)
        screen = analysis.screen_tasks(d, cfg)
        chosen = [s.task for s in screen if s.in_primary]
        res = [analysis.analyse_arm(d, g, cfg, chosen, ["math"], 0.95) for g in d.groups
               if g != "control"]  # fmt: skip
        analysis.decide(res, "none", 0.05)
        decided += sum(r.verdict in ("include", "reject") for r in res)
        n += len(res)
    assert decided / n <= 0.05 + 2.6 * math.sqrt(0.05 * 0.95 / n), decided / n


def test_loss_task_disagreement_when_tasks_fall_short_of_what_the_loss_predicts():
    """Other arms show lower own-domain loss going with higher scores (slope -1): an arm whose loss
    fell by 0.3 predicts +0.3; its primary interval [0.02, 0.1] excludes that, so it is flagged
    (and the prediction recorded); an arm on the line is not; with only two other arms, no fit."""
    from types import SimpleNamespace as NS

    from midtrain.stats.flags import predicted_gain_flags

    def arm(name, loss, delta, ci, loss_ci=None):
        dom = NS(delta_bpb=loss, ci=loss_ci or [loss - 0.05, loss + 0.05])
        return NS(arm=name, candidate_mix={name: 1.0}, domains={name: dom}, flags=[],
                  primary=NS(delta=delta, ci=ci, loss_predicted=None))  # fmt: skip

    line = [arm(f"a{i}", -x, x, [x - 0.05, x + 0.05]) for i, x in enumerate([0.1, 0.2, 0.4])]
    short = arm("short", -0.3, 0.06, [0.02, 0.10])
    on = arm("on", -0.3, 0.29, [0.2, 0.38])
    predicted_gain_flags([*line, short, on])
    assert "loss-task-disagreement" in short.flags
    assert short.primary.loss_predicted == pytest.approx(0.3, abs=0.02)
    assert not on.flags and not any(a.flags for a in line)
    few = arm("short", -0.3, 0.06, [0.02, 0.10])
    predicted_gain_flags([*line[:2], few])
    assert not few.flags


def test_select_from_takes_the_screen_of_an_earlier_study(monkeypatch, tmp_path):
    """With select_from, this study's own start and control do not pick the tasks: an earlier
    study's screen does (judged with this study's min_snr); a task it did not screen stays."""
    from types import SimpleNamespace as NS

    from midtrain.study import results
    from midtrain.study.plan import eval_job
    from midtrain.study.results import TaskScreen

    def screen(task, snr, sat=None):
        return TaskScreen(task=task, signal=snr, noise=1.0, snr=snr, start_acc=0.5, chance=0.25,
                          saturated=sat, in_primary=True)  # fmt: skip

    earlier = NS(study="pilot", screen=[screen("t1", 0.2), screen("t2", 3.0)])
    monkeypatch.setattr(results.StudyResult, "load", staticmethod(lambda p: earlier))
    tasks = [*TASKS, "t3"]
    cfg = study(tasks=tasks, extra={"eval": {"tasks": tasks, "select": "snr",
                                             "select_from": str(tmp_path)}})  # fmt: skip
    got = {s.task: s for s in analysis.screen_tasks(data(), cfg)}
    assert eval_job(cfg).settings == eval_job(study(tasks=tasks)).settings  # not the runs' key
    assert not got["t1"].in_primary and "pilot" in got["t1"].reason and "0.20" in got["t1"].reason
    assert got["t2"].in_primary and got["t2"].snr == 3.0
    assert got["t3"].in_primary and "not screened" in got["t3"].reason
    with pytest.raises(Exception, match='select = "snr"'):
        study(extra={"eval": {"tasks": TASKS, "select_from": str(tmp_path)}})


def with_gen(ex: Examples, rng, p: float) -> Examples:
    """`ex` plus a generative task `gen`: exact match 0/1 with probability p, no likelihood."""
    recs = [r for t in ex.tasks.values() for r in t.values()]
    recs += [r for d in ex.domains.values() for r in d.values()]
    for i in range(N):
        hit = float(rng.random() < p)
        recs.append(TaskExample(task="gen", doc_id=i, exact_match=hit, score=hit,
                                score_metric="exact_match"))  # fmt: skip
    return Examples(recs)


def gen_data(p_arm: float, seeds: int = 3) -> analysis.StudyData:
    d, rng = data({"task_shift": 0.2}, seeds=seeds), np.random.default_rng(7)
    for g, runs in d.groups.items():
        d.groups[g] = [with_gen(ex, rng, p_arm if g != "control" else 0.3) for ex in runs]
    return d


def test_generative_task_gets_an_exact_match_delta_and_is_named_out_of_a_likelihood_primary():
    d, tasks = gen_data(0.6), [*TASKS, "gen"]
    cfg = study(tasks=tasks)  # primary: gold_logprob_per_byte
    screen = {s.task: s for s in analysis.screen_tasks(d, cfg)}
    assert not screen["gen"].in_primary
    assert screen["gen"].reason.startswith("scored by exact_match, no gold_logprob_per_byte")
    assert screen["t1"].in_primary and screen["t2"].in_primary
    chosen = [s.task for s in screen.values() if s.in_primary]
    res = analysis.analyse_arm(d, "arm@0.3", cfg, chosen, ["math"], 0.95)
    gen = res.tasks["gen"]
    assert gen.metric == "exact_match" and gen.delta == pytest.approx(0.3, abs=0.1)
    assert gen.ci[0] > 0 and gen.acc_delta == gen.delta  # its score beside it too
    assert res.primary.tasks == TASKS and res.primary.metric == "gold_logprob_per_byte"


def test_score_primary_counts_generative_and_multiple_choice_tasks_together():
    d, tasks = gen_data(0.6), [*TASKS, "gen"]
    cfg = study(tasks=tasks, extra={"analysis": {"primary": "score"}})
    screen = analysis.screen_tasks(d, cfg)
    assert all(s.in_primary for s in screen)
    gen_start = with_gen(make_eval(np.random.default_rng(5)), np.random.default_rng(6), 0.01)
    d.start = gen_start  # exact match at the floor on the start checkpoint: chance is 0
    floor = {s.task: s for s in analysis.screen_tasks(d, cfg)}["gen"]
    assert floor.chance == 0.0 and floor.saturated == "chance"
    res = analysis.analyse_arm(d, "arm@0.3", cfg, tasks, ["math"], 0.95)
    assert res.primary.tasks == tasks and res.primary.metric == "score"
    assert res.tasks["gen"].metric == "score" and res.tasks["t1"].metric == "score"
    # the primary is the mean of acc (t1, t2) and exact match (gen): the arm moved acc by
    # +0.2 (make_eval's shift) and exact match by +0.3
    assert res.primary.delta == pytest.approx((0.2 + 0.2 + 0.3) / 3, abs=0.06)
    assert res.primary.score_delta == pytest.approx(res.primary.delta)


def test_likelihood_only_flags_an_include_whose_accuracy_did_not_move():
    """The likelihood of the gold answers rises by 0.2 in both; in one the accuracy rises with
    it (0.5 -> 0.9), in the other it stays at 0.5."""
    both = run(data({"task_shift": 0.2, "acc_p": 0.7}, seeds=4))
    assert both.verdict == "include" and both.primary.score_ci[0] > 0
    assert "likelihood-only" not in both.flags
    only = data({"task_shift": 0.2, "acc_p": 0.3}, seeds=4)
    res = run(only)
    assert res.verdict == "include" and res.primary.score_ci[0] <= 0 <= res.primary.score_ci[1]
    assert "likelihood-only" in res.flags
    acc = run(only, study(extra={"analysis": {"primary": "acc"}}))
    assert "likelihood-only" not in acc.flags  # an accuracy primary is never flagged
