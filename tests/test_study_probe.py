"""The SFT probe of a study and continued-pretraining arms, without training: the plan (chains,
mixes, probe folders) and the probe's statistics on constructed per-run values. The end-to-end
study is tests/test_study_e2e.py::test_sft_probe_and_cpt_arm_give_intervals_and_can_decide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from midtrain.study.config import load_study
from midtrain.study.plan import CONTROL, make_plan
from midtrain.study.probe_analysis import ProbeData, analyse_arm, analyse_set, mean_table
from midtrain.study.results import ArmResult, Cost, RunRecord

STUDY = """
name = "t"
checkpoint = "ckpt"
tokens = 8192
seeds = [0, 1, 2]

[stores]
web = "stores/web"
math = "stores/math"

[base]
web = 1.0

[[candidates]]
name = "math"
mix = { math = 1.0 }
max_repetition = 4.0
continued_pretraining = true

[eval]
tasks = ["world_facts"]

[sft_probe]
lrs = [1e-4, 3e-4]
epochs = 1
[[sft_probe.sets]]
name = "gsm"
train = "gsm.jsonl"
"""


def study(tmp_path: Path, extra: str = ""):
    (tmp_path / "ckpt").mkdir(exist_ok=True)
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "gsm.jsonl").write_text('{"prompt": "1 plus 1", "response": "2"}\n')
    p = tmp_path / "study.toml"
    p.write_text(STUDY + extra)
    return load_study(p)


def test_cpt_arm_trains_on_the_candidate_alone_with_the_same_budget(tmp_path):
    cfg = study(tmp_path)
    plan = make_plan(cfg, tmp_path / "out")
    assert plan.arms() == ["math@0.3", "math@cpt"]
    cpt, ctrl = plan.arm_runs("math@cpt")[0], plan.control(0)
    assert [m.model_dump() for m in cpt.run_config.mix] == [
        {"source": "math", "ratio": 1.0, "max_repetition": 4.0}
    ]
    assert set(cpt.run_config.stores) == {"math"} and cpt.cpt and not ctrl.cpt
    same = ("tokens", "seq_len", "batch_tokens", "schedule", "seed")
    assert all(getattr(cpt.run_config, k) == getattr(ctrl.run_config, k) for k in same)


def test_every_run_chain_ends_with_its_probe_on_its_own_checkpoint(tmp_path):
    cfg = study(tmp_path)
    plan = make_plan(cfg, tmp_path / "out")
    for r in plan.runs:
        chain = r.full_chain(plan.eval_job)
        assert [j.stage for j in chain] == ["train", "eval", "sft", "sft_eval"]
        sft, after = chain[2].spec, chain[3].spec
        assert sft.checkpoint == str(r.dir / "final") and sft.seed == r.seed  # the run's seed
        assert sft.lrs == [1e-4, 3e-4] and sft.data == str(tmp_path / "gsm.jsonl")
        assert Path(chain[2].dir).parent == r.dir / "sft" and after.sft == chain[2].dir
        assert after.eval.settings.tasks == [] and set(after.eval.domains) == {"web"}
    assert plan.start_probes == []
    # the same probe, the same folder; another grid is another folder (never a stale cache hit)
    assert (
        make_plan(study(tmp_path), tmp_path / "out").runs[0].probes[0].dir
        == plan.runs[0].probes[0].dir
    )
    cfg2 = study(tmp_path)
    cfg2.sft_probe.lrs = [1e-4]
    assert make_plan(cfg2, tmp_path / "out").runs[0].probes[0].dir != plan.runs[0].probes[0].dir
    cfg2.sft_probe.seeds, cfg2.sft_probe.start, cfg2.sft_probe.tasks = [5, 6], True, True
    plan2 = make_plan(cfg2, tmp_path / "out")
    assert [p.seed for p in plan2.runs[0].probes] == [5, 6] and len(plan2.start_probes) == 2
    assert plan2.runs[0].probes[0].eval.spec.eval.settings.tasks == ["world_facts"]


def fake_arm(arm: str) -> ArmResult:
    cost = Cost(runs=0, tokens=0, flops=0, wall_s=0, share_of_full_run=None)
    runs = [RunRecord(name=f"{arm}/s{s}", arm=arm, seed=s, run_id="x", dir="d", status="done")
            for s in range(3)]  # fmt: skip
    return ArmResult(verdict="inconclusive", reason="", name=arm, arm=arm, mix=[],
                     candidate_mix={}, fraction=0.3, seeds=[0, 1, 2], runs=runs,
                     checkpoints=[], cost=cost)  # fmt: skip


def probe_data(effects: dict[str, float], forget: dict[str, float]) -> ProbeData:
    """3 seeds x 40 examples per group: loss = example difficulty + seed + run noise + effect."""
    rng = np.random.default_rng(0)
    hard = rng.normal(2.0, 0.5, 40)
    seed_fx = rng.normal(0, 0.05, 3)
    data = ProbeData()
    for g in (CONTROL, *effects):
        for s in range(3):
            loss = hard + seed_fx[s] + rng.normal(0, 0.02) + effects.get(g, 0.0)
            loss = loss + rng.normal(0, 0.05, 40)
            data.add(("val", "gsm"), g, s, dict(enumerate(loss)))
            bpb = 1.0 + rng.normal(0, 0.01) + forget.get(g, 0.0) + rng.normal(0, 0.02, 30)
            data.add(("bpb", "gsm", "web"), g, s, dict(enumerate(bpb)))
    return data


def test_probe_statistics_find_a_better_arm_and_its_forgetting(tmp_path):
    cfg = study(tmp_path)
    data = probe_data({"good": -0.3, "null": 0.0}, {"good": 0.05})
    good = analyse_set(data, cfg, "gsm", "good", 0.95)
    assert good.delta_val_loss == pytest.approx(-0.3, abs=0.06) and good.ci[1] < 0
    assert good.forgetting.ci[0] > 0  # the arm forgot more of the base mix
    assert good.domains["web"].delta_bpb == pytest.approx(0.05, abs=0.02)
    assert good.forgetting_change is None  # no before-SFT values were given
    null = analyse_set(data, cfg, "gsm", "null", 0.95)
    assert null.ci[0] < 0 < null.ci[1]
    # the SFT score: minus the delta (higher is better), its interval from the same fit
    probe = analyse_arm(data, cfg, fake_arm("good"), 0.95)
    assert probe.primary.delta == pytest.approx(-good.delta_val_loss)
    assert probe.primary.ci == pytest.approx([-good.ci[1], -good.ci[0]])
    assert probe.primary.metric == "sft_val_loss_reduction" and probe.primary.tasks == ["gsm"]
    # the pooled noise has (groups - 1)(seeds - 1) = 4 degrees of freedom, the run is the unit
    assert 2 <= probe.primary.df <= 4 + 39 * 3


def test_a_runs_value_is_the_mean_over_its_sft_seeds():
    assert mean_table([{0: 1.0, 1: 2.0}, {0: 3.0, 2: 5.0}]) == {0: 2.0}
    assert mean_table([{0: 1.0}, None]) is None
