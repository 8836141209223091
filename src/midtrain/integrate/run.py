"""Run one integration round into a history folder and record it (`round.json`).

`run_round(round.toml, HISTORY)` runs the round's study into `HISTORY/<name>/` (the study's own
report is there too) and writes `HISTORY/<name>/round.json`: the round against the previous mix on
the primary score, every task, every domain and the SFT probe, each ablation's contribution (the
round minus the round without that source: paired by seed, pooled run noise as in the study), and
the merge of the round's seeds. `midtrain integrate report HISTORY` reads these records.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import BaseModel

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_text, read_json
from midtrain.stats import contrast
from midtrain.stats.analysis import confidence_at
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.results import (
    ArmResult,
    Interval,
    MergeResult,
    PrimaryResult,
    SftSetDelta,
    StudyResult,
)

FORMAT = "midtrain-round/1"
RECORD = "round.json"


class Score(BaseModel):
    """A task or domain: the previous mix's mean, the round's, and the paired delta."""

    previous: float | None
    round: float | None
    delta: float
    ci: Interval


class Ablation(BaseModel):
    source: str
    share: float
    arm: str
    contribution: float | None = None  # round minus round-without-source, primary score
    ci: Interval | None = None
    vs_previous: PrimaryResult | None = None  # the ablated mix against the previous mix


class RoundResult(BaseModel):
    format: str = FORMAT
    name: str
    round: int
    mix: dict[str, float]
    anchor: dict[str, float]
    anchor_share: float
    sources: dict[str, float]
    targets: list[str] = []  # the tasks the round aimed at (the others were guarded)
    previous: dict[str, float]
    previous_name: str
    tokens: int
    seeds: list[int]
    verdict: str
    reason: str
    metric: str
    primary: PrimaryResult | None = None  # the round minus the previous mix
    previous_score: float | None = None  # mean primary score of the previous mix's runs
    round_score: float | None = None
    tasks: dict[str, Score] = {}
    domains: dict[str, Score] = {}  # bits per byte: lower is better
    sft: dict[str, SftSetDelta] = {}
    sft_primary: PrimaryResult | None = None
    ablations: list[Ablation] = []
    merge: MergeResult | None = None

    @classmethod
    def load(cls, path: str | Path) -> RoundResult:
        return cls.model_validate(read_json(path))


def run_round(path: str | Path, history: str | Path, *, executor: str = "local",
              workers: int = 1, address: str | None = None) -> tuple[RoundResult, StudyResult]:  # fmt: skip
    """Run (or resume) the round in `path` into `history/<name>/`; write round.json there."""
    from midtrain.driver.runner import run_study
    from midtrain.integrate.config import load_round

    path = Path(path)
    spec, cfg = load_round(path)
    history = Path(history).resolve()
    if history.exists() and not history.is_dir():
        raise MidtrainError(f"--out {history} is a file; pass a folder for the round history")
    out = history / spec.name
    results = run_study(cfg, out, executor=executor, workers=workers, address=address)
    atomic_write_text(out / "round.toml", path.read_text(encoding="utf-8"))  # the file it ran
    rec = summarise(spec, cfg, results, out)
    atomic_write_text(out / RECORD, rec.model_dump_json(indent=2))
    return rec, results


def summarise(spec, cfg: StudyConfig, results: StudyResult, out: Path) -> RoundResult:  # noqa: ANN001
    """The round's record from its study's results (and its runs, for the ablations)."""
    arm = _arm(results, spec.arm())
    metric = cfg.analysis.primary
    rec = RoundResult(
        name=spec.name, round=spec.round, mix=spec.mix(), anchor=spec.anchor,
        anchor_share=spec.anchor_share, sources=spec.sources, targets=spec.targets,
        previous=spec.previous,
        previous_name=spec.previous_name, tokens=cfg.tokens, seeds=cfg.first_seeds,
        verdict=arm.verdict if arm else "failed", reason=arm.reason if arm else "no run finished",
        metric=metric,
    )  # fmt: skip
    noise = results.control.noise_floor
    if noise is not None and noise.control_scores:
        rec.previous_score = float(np.mean(noise.control_scores))
    if arm is None:
        return rec
    rec.primary = arm.base_primary or arm.primary
    if rec.primary is not None and rec.primary.run_scores:
        rec.round_score = float(np.mean(rec.primary.run_scores))
    for t, d in arm.tasks.items():
        prev = _mean(results.control.scores.get(t))
        rec.tasks[t] = Score(previous=prev, round=_plus(prev, d.delta), delta=d.delta, ci=d.ci)
    for dom, d in arm.domains.items():
        prev = _mean(results.control.domains.get(dom))
        rec.domains[dom] = Score(previous=prev, round=_plus(prev, d.delta_bpb), delta=d.delta_bpb,
                                 ci=d.ci)  # fmt: skip
    if arm.probe is not None:
        rec.sft, rec.sft_primary = arm.probe.sets, arm.probe.primary
    rec.ablations = _ablations(spec, cfg, results, out)
    rec.merge = next((m for m in results.merges if m.arm == spec.arm()), None)
    return rec


def _ablations(spec, cfg: StudyConfig, results: StudyResult, out: Path) -> list[Ablation]:  # noqa: ANN001
    """Each ablation: the round minus the round without the source, on the primary score."""
    if not spec.ablate:
        return []
    from midtrain.driver.collect import Finished
    from midtrain.study.plan import make_plan

    seeds = {a.arm: [r.seed for r in a.runs] for a in results.arms}
    plan = make_plan(cfg, out, seeds | {CONTROL: [r.seed for r in results.control.runs]})
    data = Finished(plan).data()
    tasks = results.method.primary_tasks if results.method else list(cfg.eval.tasks)
    groups = list(data.groups)
    qs = [data.quantity("tasks", t, cfg.analysis.primary, groups) for t in tasks]
    ok = all(q is not None for q in qs) and qs
    rows = []
    for src in spec.ablate:
        name = spec.ablation_arm(src)
        ab = Ablation(source=src, share=spec.sources[src], arm=name)
        a = _arm(results, name)
        ab.vs_previous = (a.base_primary or a.primary) if a else None
        if ok and spec.arm() in groups and name in groups:
            c = contrast.contrast(qs, spec.arm(), name, confidence_at(cfg))
            if c.decidable:
                ab.contribution, ab.ci = c.delta, c.ci
        rows.append(ab)
    return rows


def _arm(results: StudyResult, arm: str) -> ArmResult | None:
    return next((a for a in results.arms if a.arm == arm and a.verdict != "failed"), None)


def _mean(xs: list[float] | None) -> float | None:
    vals = [x for x in xs or [] if x == x]
    return float(np.mean(vals)) if vals else None


def _plus(a: float | None, b: float) -> float | None:
    return None if a is None else a + b
