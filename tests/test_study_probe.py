"""The SFT probe of a study and continued-pretraining arms, without training: the plan (chains,
mixes, probe folders) and the probe's statistics on constructed per-run values. The end-to-end
study is tests/test_study_e2e.py::test_sft_probe_and_cpt_arm_give_intervals_and_can_decide."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from midtrain.jobs import Job
from midtrain.stats.probe_gains import ProbeData, analyse_arm, analyse_set, mean_table
from midtrain.study.config import load_study
from midtrain.study.plan import CONTROL, make_plan
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
        for job in chain[2:]:  # what executors send to workers: pickled, or JSON for the record
            assert pickle.loads(pickle.dumps(job)) == job
            assert Job.model_validate_json(job.model_dump_json()) == job
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


# -- collect and report from synthetic run and probe folders (no training) ----------------------


def write_probe(j, shift: float, forget: float, key: list[int]) -> None:
    """A finished SFT probe and its evaluation after SFT, as the sft and sft_eval stages write
    them: per-example validation losses (difficulty + run noise + shift) and web bpb."""
    from midtrain.eval.api import tasks_key
    from midtrain.eval.results import DomainExample, EvalResult, summarise, to_json_line
    from midtrain.io import atomic_write_json
    from midtrain.sft.grid import lr_dir
    from midtrain.sft.results import DataSummary, GridPoint, SftResult, ValSummary
    from midtrain.train.rundir import write_status

    rng = np.random.default_rng(key)
    hard, run = np.random.default_rng(3).normal(2.0, 0.3, 20), rng.normal(0, 0.02)
    lr, d = j.sft.spec.lrs[0], j.dir
    loss = hard + run + shift + rng.normal(0, 0.05, 20)
    rows = [{"index": i, "tokens": 4, "bytes": 8, "nll": 4 * x, "loss": x, "bits_per_byte": x}
            for i, x in enumerate(loss)]  # fmt: skip
    lr_dir(d, lr).mkdir(parents=True)
    (lr_dir(d, lr) / "val_examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    val = ValSummary(examples=20, loss=float(loss.mean()), token_loss=1.0, bits_per_byte=1.0,
                     tokens=80)  # fmt: skip
    data = DataSummary(train_rows=1, val_rows=20, train_examples=1, val_examples=20, truncated=0,
                       dropped=0, train_tokens=8, response_tokens=2, pad_fraction=0.0)  # fmt: skip
    res = SftResult(checkpoint=j.sft.spec.checkpoint, chosen_lr=lr, val_loss=val.loss, val=val,
                    val_before=val, grid=[GridPoint(lr=lr, status="done", val_loss=val.loss,
                    dir=str(lr_dir(d, lr)))], final_checkpoint=str(lr_dir(d, lr) / "final"),
                    steps=1, epochs=1, data=data, format_check={})  # fmt: skip
    atomic_write_json(d / "sft.json", res.model_dump(mode="json"))
    write_status(d, "done")
    spec = j.eval.spec.eval
    recs = [DomainExample(domain="web", doc_id=i, bpb=3.1 + forget + rng.normal(0, 0.01),
                          nll=1.0, tokens=10, bytes=40) for i in range(30)]  # fmt: skip
    out = Path(j.eval.dir)
    out.mkdir(parents=True)
    (out / "examples.jsonl").write_text("".join(to_json_line(r) for r in recs))
    ev = EvalResult(key="k", checkpoint=str(lr_dir(d, lr) / "final"), tasks=[], include_path=None,
                    domains=spec.domains, settings=spec.settings.hashed(), results=summarise(recs),
                    seconds=1.0, timing={},
                    tasks_key=tasks_key(spec.settings.tasks, spec.settings.include_path))  # fmt: skip
    atomic_write_json(out / "eval.json", ev)


def test_collect_and_report_the_probe_of_every_run_with_any_set_name(tmp_path):
    from test_report import EVIL, fake_world, write_run

    from midtrain.driver.collect import collect
    from midtrain.report import write_report
    from midtrain.study.config import parse_study

    (tmp_path / "sft.jsonl").write_text('{"prompt": "a", "response": "b"}\n')
    data = fake_world(tmp_path)
    data["seeds"] = [0, 1, 2]
    data["candidates"][1]["continued_pretraining"] = True
    data["analysis"] = {"decide_on": "sft"}
    data["sft_probe"] = {
        "lrs": [1e-4],
        "sets": [{"name": EVIL, "train": "sft.jsonl"}],
        "start": True,
    }
    plan = make_plan(parse_study(data, base_dir=tmp_path), tmp_path / "study")
    assert plan.arms() == ["good@0.3", f"{EVIL}@0.3", f"{EVIL}@cpt"]
    for r in plan.runs:
        write_run(plan, r.dir, 0.0, r.seed)
        better = -0.4 if r.arm == "good@0.3" else 0.0
        key = [r.seed, ["control", *plan.arms()].index(r.arm)]
        write_probe(r.probes[0], better, 0.05 if r.cpt else 0.0, key)
    write_probe(plan.start_probes[0], 0.5, 0.0, [9])  # the start checkpoint: a reference
    res = collect(plan)
    arms = {a.arm: a for a in res.arms}
    good, cpt = arms["good@0.3"], arms[f"{EVIL}@cpt"]
    assert good.decided_on == "sft" and good.verdict == "include", good.primary
    assert good.probe.sets[EVIL].ci[1] < 0 and good.primary.delta > 0
    assert cpt.probe.sets[EVIL].forgetting.ci[0] > 0  # forgot more: bpb after SFT is higher
    assert cpt.probe.sets[EVIL].forgetting_change.ci[0] > 0  # and by more than before SFT
    assert cpt.verdict == "inconclusive" and res.probe.control[EVIL] and res.missing_probes == []
    assert res.probe.start[EVIL] > max(res.probe.control[EVIL])  # in no contrast, but reported
    assert res.probe.noise_df == (4 - 1) * (3 - 1) and 0 < res.probe.noise_sd < 0.1  # 4 groups
    (vs,) = res.versus_cpt  # midtraining minus continued pretraining, directly
    assert (vs.arm, vs.cpt_arm) == (f"{EVIL}@0.3", f"{EVIL}@cpt") and vs.primary.seeds == 3
    assert vs.forgetting.ci[1] < 0 and vs.forgetting.delta == pytest.approx(-0.05, abs=0.01)
    assert vs.sft.ci[0] < 0 < vs.sft.ci[1]  # the same SFT loss
    paths = write_report(res, plan.config, tmp_path / "study")
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "<script>" not in md and "<script>" not in html and "## SFT probe" in md
    assert "decided on the SFT probe" in md and "SFT probe</h2>" in html
    assert "## Midtraining vs continued pretraining" in md and "Δ forgetting (bpb)" in html
    back = json.loads(paths["results"].read_text())
    assert back["arms"][0]["probe"]["sets"][EVIL]["delta_val_loss"] < 0
