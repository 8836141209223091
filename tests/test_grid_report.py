"""The timing x weight grid's cells carry each task, the SFT probe (SFT score, SFT loss and
forgetting per set) and midtraining minus CPT, from each start's StudyResult (no training)."""

from __future__ import annotations

from midtrain.design.grid import GridStart, grid_result, markdown, table
from midtrain.study.config import parse_study
from midtrain.study.results import (
    ArmProbe,
    ArmResult,
    ControlResult,
    Cost,
    CptContrast,
    DomainDelta,
    EvalInfo,
    PrimaryResult,
    SftSetDelta,
    StartPoint,
    StudyResult,
    TaskDelta,
    Versus,
)

COST = Cost(runs=2, tokens=0, flops=0, wall_s=0, share_of_full_run=None)


def _primary(delta: float) -> PrimaryResult:
    return PrimaryResult(delta=delta, ci=[delta - 0.1, delta + 0.1], se=0.05, df=3, p=0.04,
                         metric="acc", tasks=["t1"], mde=0.1)  # fmt: skip


def _arm(arm: str, frac: float, cpt: bool, delta: float) -> ArmResult:
    sets = {"chat": SftSetDelta(delta_val_loss=-delta, ci=[-delta - 0.01, -delta + 0.01],
                                n_examples=10, forgetting=DomainDelta(delta_bpb=-0.002,
                                ci=[-0.004, 0.0], n_docs=5))}  # fmt: skip
    return ArmResult(
        verdict="include", reason="", primary=_primary(delta), name="code", arm=arm, mix=[],
        candidate_mix={"code": 1.0}, fraction=frac, cpt=cpt, seeds=[0, 1], runs=[], checkpoints=[],
        cost=COST, tasks={"t1": TaskDelta(delta=delta, ci=[0.0, 2 * delta], n_examples=10,
                                          n_seeds=2, metric="acc")},
        probe=ArmProbe(primary=_primary(delta / 2), sets=sets),
    )  # fmt: skip


def _result() -> StudyResult:
    vs = CptContrast(candidate="code", arm="code@0.3", cpt_arm="code@cpt", metric="acc",
                     primary=Versus(delta=0.05, ci=[0.01, 0.09], seeds=2))  # fmt: skip
    return StudyResult(
        study="s", start=StartPoint(), confidence=0.95, study_flags=[], versus_cpt=[vs],
        arms=[_arm("code@0.3", 0.3, False, 0.08), _arm("code@cpt", 1.0, True, 0.03)],
        control=ControlResult(seeds=[0, 1], runs=[], noise_floor=None, scores={}, domains={},
                              cost=COST),
        eval=EvalInfo(include_path=None, tasks=["t1"], domains=[], primary_metric="acc",
                      limit=None, num_fewshot=0),
    )  # fmt: skip


def test_cells_carry_tasks_sft_forgetting_and_mt_minus_cpt(tmp_path):
    from midtrain.design.grid import _html

    cfg = parse_study({"checkpoint": "c", "tokens": 4096, "stores": {"web": "w", "code": "k"},
                       "base": {"web": 1.0}, "candidates": [{"name": "code", "mix": {"code": 1.0}}],
                       "eval": {"tasks": ["t1"]}})  # fmt: skip
    start = GridStart(checkpoint="c", label="50%", dir="starts/50-x", tokens=4096)
    g = grid_result(cfg, [start], [_result()])
    mt, cpt = g.cells
    assert mt.tasks["t1"].delta == 0.08 and mt.sft.delta == 0.04
    assert mt.sft_val_loss["chat"].delta == -0.08 and mt.forgetting["chat"].delta == -0.002
    assert mt.vs_cpt.delta == 0.05 and cpt.vs_cpt is None and cpt.fraction is None
    md = markdown(g)
    head = ("| start | fraction | verdict | Δ primary | Δ t1 | SFT score | Δ SFT loss chat | "
            "forgetting chat | MT − CPT |")  # fmt: skip
    assert head in md
    assert "| 50% | 0.3 | include | +0.080 [-0.020, +0.180] | +0.080 [+0.000, +0.160] | " in md
    assert "+0.040 [-0.060, +0.140] | -0.080 [-0.090, -0.070] | -0.0020 [-0.0040, +0.0000] | " \
           "+0.050 [+0.010, +0.090] |" in md  # fmt: skip
    html = _html(g, "")
    assert "<th>forgetting chat</th>" in html and "<th>MT − CPT</th>" in html
    assert [c.header for c in table(g).columns][-2:] == ["SFT score", "MT − CPT"]
