"""What a study produces: `StudyResult` (results.json), read by the report and `study show`.

Every object has one JSON round-trip (`StudyResult.load(path)` / `save(path)`); `format` says which
layout a results.json has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from midtrain.io import atomic_write_json, read_json
from midtrain.mix.spec import MixComponent

FORMAT = "midtrain-study/2"
Interval = list[float]  # [low, high]
Verdict = Literal["include", "reject", "inconclusive", "no-verdict", "failed"]


class RunRecord(BaseModel):
    """One training run of the study and how it ended."""

    name: str
    arm: str
    seed: int
    run_id: str
    dir: str  # relative to the study directory
    status: str  # done | failed | running | interrupted | missing
    error: str | None = None
    checkpoint: str | None = None  # relative final checkpoint, when done and evaluated
    tokens: int | None = None
    flops: float | None = None
    wall_s: float | None = None
    final_loss: float | None = None


class Cost(BaseModel):
    runs: int
    tokens: int
    flops: float
    wall_s: float
    share_of_full_run: float | None


class TaskNoise(BaseModel):
    scores: list[float]  # the control's score per finished seed
    sd: float | None  # run-to-run sd of the task score not shared within a seed, pooled


class NoiseFloor(BaseModel):
    """Run-to-run noise of the primary score, pooled over every group of the study (control and
    arms), with its degrees of freedom and a chi-square interval."""

    metric: str
    control_scores: list[float]
    primary_sd: float | None  # the noise seeds do not share (what every interval uses)
    sd_ci: Interval | None = None
    df: int = 0
    total_sd: float | None = None  # within-group sd of per-run scores, the shared part included
    total_df: int = 0
    tasks: dict[str, TaskNoise]


class TaskScreen(BaseModel):
    """Whether a task can inform a decision: signal, noise, saturation."""

    task: str
    signal: float | None  # sd of the group means (start, control, arms)
    noise: float | None  # pooled run-to-run sd
    snr: float | None
    start_acc: float | None
    chance: float | None
    saturated: str | None  # "ceiling" | "chance" | None
    in_primary: bool
    reason: str = ""


class ControlResult(BaseModel):
    seeds: list[int]
    runs: list[RunRecord]
    noise_floor: NoiseFloor | None
    scores: dict[str, list[float]]  # per task: the primary metric per finished control seed
    domains: dict[str, list[float]]  # per domain: mean held-out bpb per finished control seed
    cost: Cost


class StartPoint(BaseModel):
    """The start checkpoint's own scores: the "before" of every cooldown."""

    primary: float | None = None
    control_gain: float | None = None  # mean control primary minus the start's
    control_gain_ci: Interval | None = None  # with the pooled run-to-run noise
    tasks: dict[str, float] = {}


class TaskDelta(BaseModel):
    delta: float
    ci: Interval
    se: float | None = None
    df: float | None = None
    n_examples: int
    n_seeds: int
    metric: str
    acc_delta: float | None = None
    acc_ci: Interval | None = None
    margin_delta: float | None = None
    margin_ci: Interval | None = None


class DomainDelta(BaseModel):
    delta_bpb: float
    ci: Interval
    se: float | None = None
    n_docs: int


class GuardResult(BaseModel):
    target: str  # "task NAME" | "domain NAME"
    tolerance: float
    status: Literal["ok", "at-risk", "broken", "missing"]
    delta: float | None = None
    ci: Interval | None = None


class PrimaryResult(BaseModel):
    """The arm's effect on the primary score (mean over `tasks` of `metric`)."""

    delta: float
    ci: Interval
    se: float | None
    df: float
    p: float | None
    p_adjusted: float | None = None  # after the study's multiple-testing correction
    metric: str
    tasks: list[str]
    mde: float | None  # the effect detectable with 80% power at this noise
    seeds_needed: int | None = None  # seeds per arm to detect an effect of |delta| (80% power)
    run_share: float | None = None  # share of the variance that is run-to-run noise
    run_scores: list[float] = []  # the arm's primary score per finished seed


class ArmAnalysis(BaseModel):
    """The statistics of one arm against the control of the same seeds."""

    verdict: Verdict
    reason: str
    suggestion: str | None = None
    flags: list[str] = []
    primary: PrimaryResult | None = None
    tasks: dict[str, TaskDelta] = {}
    domains: dict[str, DomainDelta] = {}
    guards: list[GuardResult] = []


class ArmResult(ArmAnalysis):
    """One arm (a candidate at one fraction): its runs, cost and analysis."""

    name: str
    arm: str
    mix: list[MixComponent]
    candidate_mix: dict[str, float]
    fraction: float
    seeds: list[int]  # seeds whose arm and control runs both finished
    runs: list[RunRecord]
    checkpoints: list[str]
    cost: Cost


class EvalInfo(BaseModel):
    include_path: str | None
    tasks: list[str]
    domains: list[str]
    primary_metric: str
    limit: int | None
    num_fewshot: int


class Method(BaseModel):
    """How the arms were decided (stated in the report)."""

    interval: str = "pooled-run t"
    confidence: float  # of each interval (lower than the study's with sequential looks)
    correction: str = "none"  # none | holm | bh, over the arms' primary p-values
    looks: int = 1  # seeds = "auto": analyses so far; each used alpha / max looks
    primary_tasks: list[str] = []


class StudyResult(BaseModel):
    format: str = FORMAT
    study: str
    control: ControlResult
    start: StartPoint
    arms: list[ArmResult]
    eval: EvalInfo
    confidence: float
    study_flags: list[str]
    method: Method | None = None
    screen: list[TaskScreen] = []

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        return cls.model_validate(read_json(path))

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.model_dump(mode="json"))

    @property
    def failed_runs(self) -> list[RunRecord]:
        runs = self.control.runs + [r for a in self.arms for r in a.runs]
        return [r for r in runs if r.status != "done"]
