"""Measured points for the mix optimiser: one per finished run, its mix and its metrics.

Read from finished studies (`STUDY/study.json` + `STUDY/results.json`) and from a round history
(each `ROUNDS/<name>/` holding `round.json` is itself a finished study: its control trains on the
previous mix, its arms on the round's mix and its ablations).

Each metric is one of:

- `primary`: the run's primary score (higher is better), **per run**: `primary.run_scores` of an
  arm, `control.noise_floor.control_scores` of the control.
- `domain:NAME`: held-out bits per byte (lower is better), **per run** from the run's own
  `eval/eval.json` when it is there; otherwise **derived**: the arm's mean (the control's mean plus
  the arm's `delta_bpb`) as one point carrying the delta's se as its noise.
- `task:NAME`: a task's primary metric (higher is better), per run from `eval/eval.json` or
  derived from the control's scores plus the task's delta the same way.

Runs shared between studies (a round reusing the study's control) are one point (by run id).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from midtrain.errors import MidtrainError
from midtrain.io import read_json
from midtrain.study.results import ArmResult, RunRecord, StudyResult
from midtrain.study.tables import StudyTable

PRIMARY = "primary"


@dataclass(frozen=True)
class Point:
    """One measurement: a mix, a value, and how it was obtained."""

    mix: tuple[tuple[str, float], ...]  # sorted (source, ratio), ratios > 0
    value: float
    origin: str  # "STUDY/ARM/sSEED" or "STUDY/ARM (mean)"
    per_run: bool = True  # False: an arm's mean, with `se` its noise
    se: float | None = None


@dataclass
class Points:
    """Every metric's points, the sources seen, and what the optimiser needs from the studies."""

    metrics: dict[str, list[Point]] = field(default_factory=dict)
    higher_better: dict[str, bool] = field(default_factory=dict)
    studies: list[tuple[Path, StudyTable, StudyResult]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def sources(self) -> list[str]:
        return sorted({s for ps in self.metrics.values() for p in ps for s, _ in p.mix})

    def matrix(self, metric: str, sources: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """X [points, sources], y, se (nan for per-run points) of one metric."""
        ps = self.metrics[metric]
        col = {s: j for j, s in enumerate(sources)}
        x = np.zeros((len(ps), len(sources)))
        for i, p in enumerate(ps):
            for s, r in p.mix:
                x[i, col[s]] = r
        y = np.array([p.value for p in ps])
        se = np.array([np.nan if p.se is None else p.se for p in ps])
        return x, y, se

    def add(self, metric: str, point: Point, higher_better: bool) -> None:
        if np.isfinite(point.value):
            self.metrics.setdefault(metric, []).append(point)
            self.higher_better[metric] = higher_better


def read_study(d: Path) -> tuple[StudyTable, StudyResult]:
    """(validated config as data, results) of a finished study folder."""
    if not (d / "study.json").is_file() or not (d / "results.json").is_file():
        raise MidtrainError(f"{d}: not a finished study (no study.json and results.json); "
                            "pass the --out folder of `midtrain study run`")  # fmt: skip
    return read_json(d / "study.json")["config"], StudyResult.load(d / "results.json")


def round_dirs(history: Path | None) -> list[Path]:
    """The round folders of a history, in round order."""
    if history is None:
        return []
    if not history.is_dir():
        raise MidtrainError(f"--history {history}: not a folder; pass the --out folder of "
                            "`midtrain integrate run`")  # fmt: skip
    recs = [(read_json(p), p.parent) for p in history.glob("*/round.json")]
    return [d for r, d in sorted(recs, key=lambda x: (x[0]["round"], x[0]["name"]))]


def load_points(studies: list[Path], history: Path | None = None) -> Points:
    """Every finished run of the studies (and of the rounds) as points of every metric."""
    pts = Points()
    seen: set[str] = set()
    for d in [Path(s).resolve() for s in studies] + round_dirs(history):
        cfg, res = read_study(d)
        _check_alike(pts, d, res)
        if pts.studies:
            _note_protocol(pts, d, cfg)
        pts.studies.append((d, cfg, res))
        base = tuple(sorted((s, float(r)) for s, r in cfg["base"].items() if r > 0))
        _control_points(pts, d, res, base, seen)
        for arm in res.arms:
            if arm.verdict != "failed":
                _arm_points(pts, d, res, arm, seen)
    return pts


def _check_alike(pts: Points, d: Path, res: StudyResult) -> None:
    """Primary scores are pooled only between studies scored alike (metric and tasks)."""
    if not pts.studies:
        return
    d0, _, r0 = pts.studies[0]
    if _scored(res) != _scored(r0):
        raise MidtrainError(f"{d}: its primary score ({_scored(res)}) is not {d0.name}'s "
                            f"({_scored(r0)}); optimise over studies scored alike")  # fmt: skip


def _note_protocol(pts: Points, d: Path, cfg: StudyTable) -> None:
    """Scores of runs with other tokens or another start checkpoint are pooled as they are."""
    d0, cfg0, _ = pts.studies[0]
    for k in ("tokens", "checkpoint", "schedule"):
        if cfg.get(k) != cfg0.get(k):
            pts.notes.append(f"{d.name}: its {k} differs from {d0.name}'s; their runs are pooled "
                             "as if alike (the law has no term for it)")  # fmt: skip


def _scored(res: StudyResult) -> str:
    tasks = res.method.primary_tasks if res.method else res.eval.tasks
    return f"{res.eval.primary_metric} over {', '.join(tasks) or 'no task'}"


def _control_points(pts: Points, d: Path, res: StudyResult, mix: tuple, seen: set[str]) -> None:
    noise = res.control.noise_floor
    scores = noise.control_scores if noise is not None else []
    done = [r for r in res.control.runs if r.status == "done"]
    fresh = [r.run_id not in seen for r in done]
    if _runs(pts, d, res, done, scores, mix, seen):
        return
    for key, table, hb in (
        ("domain", res.control.domains, False),
        ("task", res.control.scores, True),
    ):
        for name, vals in table.items():  # per finished control run, in the same order
            for i, v in enumerate(vals if len(vals) == len(done) else []):
                if fresh[i]:
                    origin = f"{d.name}/control/s{done[i].seed}"
                    pts.add(f"{key}:{name}", Point(mix, float(v), origin), hb)


def _arm_points(pts: Points, d: Path, res: StudyResult, arm: ArmResult, seen: set[str]) -> None:
    mix = tuple(sorted((m.source, float(m.ratio)) for m in arm.mix if m.ratio > 0))
    primary = arm.base_primary or arm.primary
    scores = primary.run_scores if primary is not None else []
    done = [r for r in arm.runs if r.status == "done"]
    if not _runs(pts, d, res, done, scores, mix, seen):
        _derived(pts, d, res, arm, mix)


def _runs(pts: Points, d: Path, res: StudyResult, done: list[RunRecord], scores: list[float],
          mix: tuple, seen: set[str]) -> bool:  # fmt: skip
    """The primary score of each finished run (scores are in the order of the finished runs) and
    its evaluations; False when some run's eval.json is missing (then the means are used)."""
    every = True
    for i, run in enumerate(done):
        if run.run_id in seen:
            continue
        seen.add(run.run_id)
        if len(scores) == len(done):
            pts.add(PRIMARY, Point(mix, scores[i], f"{d.name}/{run.arm}/s{run.seed}"), True)
        every = _run_evals(pts, d, res, run, mix) and every
    return every


def _run_evals(pts: Points, d: Path, res: StudyResult, run: RunRecord, mix: tuple) -> bool:
    """Per-run domain bpb and task scores from the run's eval.json (False when it is not there)."""
    path = d / run.dir / "eval" / "eval.json"
    if not path.is_file():
        return False
    summ = read_json(path)["results"]
    origin = f"{d.name}/{run.arm}/s{run.seed}"
    for dom in res.eval.domains:
        v = (summ["domains"].get(dom) or {}).get("bpb", {}).get("mean")
        if v is not None:
            pts.add(f"domain:{dom}", Point(mix, float(v), origin), False)
    for t in res.eval.tasks:
        v = (summ["tasks"].get(t) or {}).get(res.eval.primary_metric, {}).get("mean")
        if v is not None:
            pts.add(f"task:{t}", Point(mix, float(v), origin), True)
    return True


def _derived(pts: Points, d: Path, res: StudyResult, arm: ArmResult, mix: tuple) -> None:
    """No eval.json: the arm's means (control mean + delta) with the delta's se."""
    origin = f"{d.name}/{arm.arm} (mean)"
    for dom, dd in arm.domains.items():
        ctl = [x for x in res.control.domains.get(dom, []) if x == x]
        if ctl:
            v = float(np.mean(ctl)) + dd.delta_bpb
            pts.add(f"domain:{dom}", Point(mix, v, origin, False, dd.se), False)
    for t, td in arm.tasks.items():
        ctl = [x for x in res.control.scores.get(t, []) if x == x]
        if ctl:
            v = float(np.mean(ctl)) + td.delta
            pts.add(f"task:{t}", Point(mix, v, origin, False, td.se), True)


def current_mix(pts: Points) -> tuple[dict[str, float], str]:
    """The mix to beat: the last round's (when a history was read) or the first study's base."""
    rounds = [d for d, _, _ in pts.studies if (d / "round.json").is_file()]
    if rounds:
        rec = read_json(rounds[-1] / "round.json")
        return dict(rec["mix"]), rec["name"]
    return dict(pts.studies[0][1]["base"]), "base"
