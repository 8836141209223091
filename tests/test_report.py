"""results.json + report.md + report.html from synthetic run directories (no training)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from midtrain.io import atomic_write_json
from midtrain.study.config import parse_study
from midtrain.study.plan import make_plan
from midtrain.study.report import write_report
from midtrain.study.runner import collect_results

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


def write_run(d: Path, shift: float, seed: int, n: int = 80) -> None:
    rng = np.random.default_rng(seed * 7 + int(shift * 100))
    base = np.random.default_rng(1).normal(-2, 0.5, size=n)
    recs = []
    for t in ("t1", "t2"):
        for i in range(n):
            v = base[i] + shift + rng.normal(0, 0.05)
            recs.append(
                {
                    "kind": "task",
                    "task": t,
                    "doc_id": i,
                    "acc": float(v > -2),
                    "acc_norm": None,
                    "gold_logprob_per_byte": float(v),
                    "margin": float(v + 2),
                }
            )
    for dom in ("web", "math"):
        for i in range(30):
            recs.append(
                {
                    "kind": "domain",
                    "domain": dom,
                    "doc_id": i,
                    "bpb": 3.0 + rng.normal(0, 0.01),
                    "nll": 1.0,
                    "tokens": 10,
                    "bytes": 40,
                }
            )
    (d / "eval").mkdir(parents=True)
    (d / "eval" / "examples.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n")
    atomic_write_json(d / "eval" / "eval.json", {})
    atomic_write_json(d / "status.json", {"status": "done"})
    atomic_write_json(
        d / "metrics.json", {"tokens": 8192, "flops": 1e12, "wall_s": 3.0, "final_loss": 2.0}
    )
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
        write_run(r.dir, shifts[r.arm], r.seed)
    write_run(Path(plan.base_eval["dir"]), -0.5, 9)
    results = collect_results(plan)
    paths = write_report(results, plan, out)

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
    for png in ("deltas", "loss", "domains"):
        assert (out / "plots" / f"{png}.png").stat().st_size > 1000
    assert EVIL not in md and "&lt;script&gt;" in md
