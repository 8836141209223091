"""Midtraining against continued pretraining: a mixed arm minus its @cpt arm, from their paired
per-seed differences, on synthetic per-example records (test_analysis's helpers)."""

from __future__ import annotations

import numpy as np
import pytest
from test_analysis import N, data, study

from midtrain.stats import analysis, versus_cpt
from midtrain.stats.probe_gains import ProbeData
from midtrain.study.results import ArmResult, Cost, StudyResult

ARMS = {"arm@0.3": (0.3, False), "arm@cpt": (1.0, True)}
SFT = {"sets": [{"name": "chat", "train": "t.jsonl"}]}


def arm_results(d: analysis.StudyData, cfg) -> list[ArmResult]:
    """Each arm analysed against the control, as collect.py makes it."""
    out = []
    for g, (frac, cpt) in ARMS.items():
        a = analysis.analyse_arm(d, g, cfg, list(cfg.eval.tasks), ["math"], 0.95)
        out.append(ArmResult(**a.model_dump(), name="arm", arm=g, mix=[],
                             candidate_mix={"math": 1.0}, fraction=frac, cpt=cpt,
                             seeds=[0, 1, 2], runs=[], checkpoints=[],
                             cost=Cost(runs=3, tokens=0, flops=0, wall_s=0, share_of_full_run=None)))  # fmt: skip
    analysis.decide(out, "none", 0.05)
    return out


def two_arms(mt: float, cpt: float) -> analysis.StudyData:
    d = data({"task_shift": mt}, other_arms={"arm@cpt": {"task_shift": cpt}}, seed0=4)
    d.designs["arm@cpt"] = "cpt"
    return d


@pytest.mark.parametrize(("mt", "cpt", "sign"), [(0.2, 0.0, 1), (0.0, 0.2, -1)])
def test_mt_minus_cpt_has_the_right_sign_and_an_interval(mt, cpt, sign):
    cfg = study(extra={"candidates": [{"name": "arm", "mix": {"math": 1.0},
                                       "continued_pretraining": True}]})  # fmt: skip
    d = two_arms(mt, cpt)
    arms = arm_results(d, cfg)
    (v,) = versus_cpt.contrasts(d, None, cfg, arms, 0.95)
    assert (v.arm, v.cpt_arm, v.candidate) == ("arm@0.3", "arm@cpt", "arm")
    p = v.primary
    assert p.delta * sign == pytest.approx(0.2, abs=0.05) and p.seeds == 3
    assert p.ci[0] < p.delta < p.ci[1] and (p.ci[0] > 0 if sign > 0 else p.ci[1] < 0)
    assert p.df >= 2 and p.p < 0.05  # seeds - 1 from the paired differences, at least
    # both arms against one control with complete seeds: the difference of their deltas
    assert p.delta == pytest.approx(arms[0].primary.delta - arms[1].primary.delta)
    assert v.sft is None and v.forgetting is None  # no SFT probe


def test_equal_arms_give_an_interval_around_zero():
    cfg = study(extra={"candidates": [{"name": "arm", "mix": {"math": 1.0},
                                       "continued_pretraining": True}]})  # fmt: skip
    d = two_arms(0.1, 0.1)
    (v,) = versus_cpt.contrasts(d, None, cfg, arm_results(d, cfg), 0.95)
    assert v.primary.ci[0] < 0 < v.primary.ci[1]


def probe_data(sft_gap: float, forget_gap: float, seeds: int = 3) -> ProbeData:
    """Per-example SFT val loss and bpb after SFT: the mixed arm lower than @cpt by the gaps."""
    rng, pd = np.random.default_rng(7), ProbeData()
    base_v, base_b = rng.normal(2.0, 0.3, N), rng.normal(1.5, 0.2, N)
    shift = {"control": (0.0, 0.0), "arm@0.3": (-sft_gap, -forget_gap), "arm@cpt": (0.0, 0.0)}
    for g, (dv, db) in shift.items():
        for s in range(seeds):
            u = rng.normal(0, 0.01)
            pd.add(("val", "chat"), g, s, {i: float(base_v[i] + dv + u + rng.normal(0, 0.02))
                                            for i in range(N)})  # fmt: skip
            pd.add(
                ("bpb", "chat", "web"), g, s, {i: float(base_b[i] + db + u / 5) for i in range(N)}
            )
    return pd


def test_with_an_sft_probe_the_contrast_covers_sft_loss_and_forgetting():
    cfg = study(extra={"candidates": [{"name": "arm", "mix": {"math": 1.0},
                                       "continued_pretraining": True}], "sft_probe": SFT})  # fmt: skip
    d = two_arms(0.0, 0.0)
    (v,) = versus_cpt.contrasts(d, probe_data(0.1, 0.05), cfg, arm_results(d, cfg), 0.95)
    assert v.sft.delta == pytest.approx(0.1, abs=0.03) and v.sft.ci[0] > 0  # fine-tunes better
    assert v.forgetting.delta == pytest.approx(-0.05, abs=0.02) and v.forgetting.ci[1] < 0
    assert v.sft.seeds == v.forgetting.seeds == 3


def test_no_cpt_arm_no_contrast():
    cfg = study()
    d = data({"task_shift": 0.1})
    a = analysis.analyse_arm(d, "arm@0.3", cfg, list(cfg.eval.tasks), ["math"], 0.95)
    arm = ArmResult(**a.model_dump(), name="arm", arm="arm@0.3", mix=[], candidate_mix={},
                    fraction=0.3, seeds=[0, 1, 2], runs=[], checkpoints=[],
                    cost=Cost(runs=3, tokens=0, flops=0, wall_s=0, share_of_full_run=None))  # fmt: skip
    assert versus_cpt.contrasts(d, None, cfg, [arm], 0.95) == []


def test_results_and_report_carry_the_contrast(tmp_path):
    """collect() computes it from the runs; results.json, report.md and report.html show it."""
    from test_report import fake_world, write_run

    from midtrain.driver.collect import collect
    from midtrain.report import write_report
    from midtrain.study.config import parse_study
    from midtrain.study.plan import make_plan

    world = fake_world(tmp_path)
    world["candidates"] = [{"name": "good", "mix": {"math": 1.0}, "continued_pretraining": True}]
    cfg = parse_study(world, base_dir=tmp_path)
    plan = make_plan(cfg, tmp_path / "study")
    shifts = {"control": 0.0, "good@0.3": 0.3, "good@cpt": 0.1}
    for r in plan.runs:
        write_run(plan, r.dir, shifts[r.arm], r.seed)
    res = collect(plan)
    (v,) = res.versus_cpt
    assert (v.arm, v.cpt_arm) == ("good@0.3", "good@cpt") and v.primary.seeds == 2
    assert v.primary.delta == pytest.approx(0.2, abs=0.03)
    paths = write_report(res, cfg, tmp_path / "study")
    saved = StudyResult.load(paths["results"])
    assert saved.versus_cpt[0].primary.delta == v.primary.delta
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert (
        "## Midtraining vs continued pretraining" in md and "| good@0.3 | good@cpt | 2 | +0.2" in md
    )
    assert "<h2>Midtraining vs continued pretraining</h2>" in html
