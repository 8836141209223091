"""results.json + report.md + report.html from synthetic run directories (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from midtrain.driver.collect import collect
from midtrain.eval.api import tasks_key
from midtrain.eval.results import DomainExample, EvalResult, TaskExample, summarise, to_json_line
from midtrain.io import atomic_write_json
from midtrain.report import write_report
from midtrain.study.config import parse_study
from midtrain.study.plan import StudyPlan, make_plan
from midtrain.study.results import StudyResult
from midtrain.train.rundir import RunResult

EVIL = "<script>alert(1)</script>"


def fake_world(tmp: Path) -> dict:
    (tmp / "ckpt").mkdir()
    (tmp / "ckpt" / "config.json").write_text("{}")
    for s in ("web", "math"):
        (tmp / s).mkdir()
        atomic_write_json(tmp / s / "manifest.json", {"content_hash": f"h-{s}"})
    return {
        "name": "synthetic",
        "checkpoint": "ckpt",
        "tokens": 8192,
        "seeds": [0, 1],
        "stores": {"web": "web", "math": "math"},
        "base": {"web": 1.0},
        "candidates": [
            {"name": "good", "mix": {"math": 1.0}},
            {"name": EVIL, "mix": {"math": 1.0}},
        ],
        "eval": {"tasks": ["t1", "t2"]},
        "full_run_tokens": 1_000_000,
    }


def write_run(
    plan: StudyPlan, d: Path, shift: float, seed: int, n: int = 80, ckpt=None, gen_p=None
) -> None:
    """A finished run directory as the train and eval stages write it (no training); with
    `gen_p`, a generative task `g` too (exact match with probability gen_p, no likelihood)."""
    rng = np.random.default_rng([seed, int(shift * 100) + 1000])
    base = np.random.default_rng(1).normal(-2, 0.5, size=n)
    recs: list = []
    for t in ("t1", "t2"):
        for i in range(n):
            v = base[i] + shift + rng.normal(0, 0.05)
            recs.append(TaskExample(task=t, doc_id=i, acc=float(v > -2), gold_logprob_per_byte=v,
                                    margin=v + 2))  # fmt: skip
    for i in range(n if gen_p is not None else 0):
        hit = float(rng.random() < gen_p)
        recs.append(TaskExample(task="g", doc_id=i, exact_match=hit, score=hit,
                                score_metric="exact_match", response="12"))  # fmt: skip
    for dom in ("web", "math"):
        for i in range(30):
            recs.append(DomainExample(domain=dom, doc_id=i, bpb=3.0 + rng.normal(0, 0.01),
                                      nll=1.0, tokens=10, bytes=40))  # fmt: skip
    ev = plan.eval_job
    (d / "eval").mkdir(parents=True)
    (d / "eval" / "examples.jsonl").write_text("".join(to_json_line(r) for r in recs))
    result = EvalResult(
        key="k", checkpoint=str(ckpt or d / "final"), tasks=ev.settings.tasks, include_path=None,
        domains=ev.domains, settings=ev.settings.hashed(), results=summarise(recs), seconds=1.0,
        timing={}, tasks_key=tasks_key(ev.settings.tasks, ev.settings.include_path),
    )  # fmt: skip
    atomic_write_json(d / "eval" / "eval.json", result)
    if ckpt is not None:  # the start checkpoint: evaluated, not trained
        return
    atomic_write_json(d / "status.json", {"status": "done"})
    run = RunResult(steps=2, tokens=8192, final_loss=2.0, mean_loss_last_10pct=2.0, first_loss=3.0,
                    start_lr=1e-3, final_lr=0.0, wall_s=3.0, tokens_per_s=2730.0, flops=1e12,
                    final_checkpoint=str(d / "final"))  # fmt: skip
    atomic_write_json(d / "metrics.json", run)
    d.joinpath("log.jsonl").write_text(
        "\n".join(
            json.dumps({"step": s, "tokens": 4096 * s, "loss": 3 - 0.1 * s}) for s in range(1, 3)
        )
    )


def test_results_and_report_from_run_dirs(tmp_path):
    cfg = parse_study(fake_world(tmp_path), base_dir=tmp_path)
    out = tmp_path / "study"
    plan = make_plan(cfg, out)
    shifts = {"control": 0.0, "good@0.3": 0.3, f"{EVIL}@0.3": 0.0}
    for r in plan.runs:
        write_run(plan, r.dir, shifts[r.arm], r.seed)
    write_run(plan, plan.start_dir, -0.5, 9, ckpt=cfg.checkpoint)
    results = collect(plan)
    paths = write_report(results, plan.config, out)

    saved = json.loads(paths["results"].read_text())
    arms = {a["name"]: a for a in saved["arms"]}
    assert arms["good"]["verdict"] == "include"
    assert arms[EVIL]["verdict"] == "inconclusive"
    for key in (
        "name",
        "mix",
        "fraction",
        "seeds",
        "verdict",
        "primary",
        "tasks",
        "domains",
        "flags",
        "checkpoints",
        "cost",
    ):
        assert key in arms["good"]
    assert set(arms["good"]["tasks"]["t1"]) >= {"delta", "ci", "acc_delta", "acc_ci"}
    assert set(arms["good"]["domains"]["web"]) >= {"delta_bpb", "ci"}
    assert arms["good"]["cost"]["tokens"] == 2 * 8192
    assert arms["good"]["cost"]["share_of_full_run"] == 2 * 8192 / 1_000_000
    assert saved["control"]["noise_floor"]["primary_sd"] is not None
    assert saved["start"]["control_gain"] > 0.4
    assert "eval" in saved and "include_path" in saved["eval"]

    html = paths["html"].read_text()
    assert EVIL not in html and "&lt;script&gt;" in html
    assert html.count("data:image/png;base64,") == 3
    md = paths["md"].read_text()
    assert "| good@0.3 |" in md and "**include**" in md
    assert saved["format"] == "midtrain-study/2"
    for png in ("deltas", "loss", "domains"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
    assert EVIL not in md and "&lt;script&gt;" in md


def test_a_generative_task_out_of_the_primary_is_named_with_its_reason(tmp_path):
    world = fake_world(tmp_path) | {"eval": {"tasks": ["t1", "t2", "g"]}}
    world["candidates"] = world["candidates"][:1]
    cfg = parse_study(world, base_dir=tmp_path)
    plan = make_plan(cfg, tmp_path / "study")
    for r in plan.runs:
        write_run(plan, r.dir, 0.3 if r.arm != "control" else 0.0, r.seed,
                  gen_p=0.8 if r.arm != "control" else 0.2)  # fmt: skip
    write_run(plan, plan.start_dir, -0.5, 9, ckpt=cfg.checkpoint, gen_p=0.1)
    results = collect(plan)
    paths = write_report(results, plan.config, tmp_path / "study")
    good = results.arms[0]
    assert good.primary.tasks == ["t1", "t2"] and good.verdict == "include"
    g = good.tasks["g"]
    assert g.metric == "exact_match" and g.ci[0] > 0 and g.n_examples == 80
    screen = {s.task: s for s in results.screen}
    assert not screen["g"].in_primary and screen["g"].start_acc == pytest.approx(0.1, abs=0.1)
    why = "scored by exact_match, no gold_logprob_per_byte per example"
    assert screen["g"].reason.startswith(why)
    assert results.control.scores["g"] == pytest.approx([0.2, 0.2], abs=0.15)
    md = paths["md"].read_text()
    assert "Left out of the primary: g (scored by exact\\_match, no gold\\_logprob" in md
    assert "(exact\\_match) |" in md  # the per-task row says which metric its delta is on
    assert "Left out of the primary: g (scored by exact_match" in paths["html"].read_text()


NAMES = ["web[v2]", "数学 / code", "x" * 300, "[bold]*_`|#<b>"]


def test_any_name_works_in_folders_tables_markdown_and_html(tmp_path):
    from rich.console import Console

    from midtrain.report import verdict_table

    data = fake_world(tmp_path)
    data["name"] = "[study] " + "y" * 300
    data["candidates"] = [{"name": n, "mix": {"math": 1.0}} for n in NAMES]
    cfg = parse_study(data, base_dir=tmp_path)
    out = tmp_path / "study"
    plan = make_plan(cfg, out)
    assert all(len(r.dir.name) <= 80 for r in plan.runs)
    assert len({r.dir for r in plan.runs}) == len(plan.runs)
    for r in plan.runs:
        write_run(plan, r.dir, 0.3 if r.candidate == NAMES[0] else 0.0, r.seed)
    results = collect(plan)
    paths = write_report(results, plan.config, out)
    console = Console(record=True, width=400)
    console.print(verdict_table(results))  # markup in names must print as written
    text = console.export_text()
    assert "web[v2]@0.3" in text and "数学 / code@0.3" in text and "[bold]*_`|#<b>@0.3" in text
    md, html = paths["md"].read_text(), paths["html"].read_text()
    assert "<b>" not in md and "<b>" not in html and "&lt;b&gt;" in html
    assert "| web\\[v2\\]@0.3 |" in md  # escaped in Markdown, shown as written once rendered
    assert StudyResult.load(paths["results"]).arms[2].name == "x" * 300


def test_dry_run_power_line_in_noise_units_then_measured(tmp_path):
    from midtrain.commands.study_plan import power_line

    data = fake_world(tmp_path)
    plan = make_plan(parse_study(data, base_dir=tmp_path), tmp_path / "study")
    line = power_line(plan)
    # two arms of one design share the control: 2 x (2 - 1) / (1 + 1/4) = 1.6 df, not 2
    assert "2 arm(s) x 2 seeds = 1.6 degrees of freedom" in line and "measured" not in line
    factor = float(line.split("= ")[2].split(" x s")[0])
    from scipy import stats as sps

    assert factor == pytest.approx(sps.t.ppf(0.975, 1.6) + sps.t.ppf(0.8, 1.6), rel=0.01)
    for r in plan.runs:
        write_run(plan, r.dir, 0.1, r.seed)
    collect(plan).save(plan.out / "results.json")
    assert "measured s = " in power_line(plan)
    one = make_plan(parse_study({**data, "seeds": [0]}, base_dir=tmp_path), tmp_path / "s1")
    assert "no verdict is possible" in power_line(one)
