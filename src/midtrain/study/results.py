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
from midtrain.study.trajectory_results import Trajectory, TrajectoryInfo

FORMAT = "midtrain-study/2"
CONTROL_ARM = "control"
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
    signal: float | None  # |control mean - start| / sqrt 2 (start and control only, never arms)
    noise: float | None  # the control's seed-to-seed sd
    noise_late: float | None = None  # Signal-and-Noise's: sd over one run's late eval points
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
    scores: dict[str, list[float]]  # per task: the primary metric (else its score) per control seed
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
    p: float | None = None  # two-sided, unadjusted
    p_adjusted: float | None = None  # Holm over the arm's primary tasks (task-regression check)
    n_examples: int
    n_seeds: int
    metric: str  # the primary's, or a task without it: its score's (exact_match, pass@1)
    acc_delta: float | None = None  # accuracy (a task without one: its score)
    acc_ci: Interval | None = None
    margin_delta: float | None = None
    margin_ci: Interval | None = None


class DomainDelta(BaseModel):
    delta_bpb: float
    ci: Interval
    se: float | None = None
    df: float | None = None
    n_docs: int


class GuardResult(BaseModel):
    target: str  # "task NAME" | "domain NAME"
    tolerance: float
    status: Literal["ok", "at-risk", "broken", "missing"]
    delta: float | None = None
    ci: Interval | None = None
    p: float | None = None  # of "no regression beyond the tolerance" (consistent with ci)
    p_adjusted: float | None = None  # after the study's correction (guards are in the family)


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
    seeds_needed: int | None = None  # seeds per arm to detect analysis.mde (80% power)
    standardized: bool = False  # tasks weighted by 1 / their run-to-run sd
    delta_adjusted: float | None = None  # seeds = "auto": bias-adjusted for stopping early
    loss_predicted: float | None = None  # the delta its own-domain loss predicts (other arms' fit)
    run_share: float | None = None  # share of the variance that is run-to-run noise
    run_scores: list[float] = []  # the arm's primary score per finished seed
    score_delta: float | None = None  # the same tasks' mean score (accuracy; exact match, pass@1)
    score_ci: Interval | None = None  # its interval (unadjusted): the likelihood-only flag reads it


class ProbeRun(BaseModel):
    """One SFT probe of one run on one set (one SFT seed)."""

    run: str
    set: str
    seed: int
    status: Literal["done", "missing"]
    dir: str  # relative to the study directory
    chosen_lr: float | None = None
    val_loss: float | None = None  # the chosen LR's in-domain SFT validation loss
    val_before: float | None = None  # the run's own checkpoint, before SFT


class SftSetDelta(BaseModel):
    """One SFT set: the arm minus the control after SFT (the run is the unit of replication)."""

    delta_val_loss: float  # in-domain SFT validation loss (nats per token); lower is better
    ci: Interval
    se: float | None = None
    n_examples: int
    val_loss: list[float] = []  # the arm's per finished run (mean over SFT seeds)
    forgetting: DomainDelta | None = None  # mean bpb over the base mix's domains after SFT
    forgetting_change: DomainDelta | None = None  # the same of (after SFT - before SFT) per run
    domains: dict[str, DomainDelta] = {}  # each base domain after SFT
    domains_change: dict[str, DomainDelta] = {}  # each base domain, after - before SFT
    tasks: dict[str, TaskDelta] = {}  # task scores after SFT ([sft_probe] tasks = true)


class ArmProbe(BaseModel):
    """An arm's SFT probe: per set, and the SFT score (higher is better)."""

    primary: PrimaryResult | None = None  # mean over sets of minus the delta of SFT val loss
    sets: dict[str, SftSetDelta] = {}
    runs: list[ProbeRun] = []


class ArmAnalysis(BaseModel):
    """The statistics of one arm against the control of the same seeds."""

    verdict: Verdict
    reason: str
    suggestion: str | None = None
    flags: list[str] = []
    primary: PrimaryResult | None = None  # the score that decides (see decided_on)
    decided_on: Literal["base", "sft"] = "base"
    base_primary: PrimaryResult | None = None  # the tasks' primary, when the SFT probe decides
    tasks: dict[str, TaskDelta] = {}
    domains: dict[str, DomainDelta] = {}
    guards: list[GuardResult] = []
    regressed_tasks: list[str] = []  # primary tasks significantly worse (after correction)
    probe: ArmProbe | None = None


class ArmResult(ArmAnalysis):
    """One arm (a candidate at one fraction): its runs, cost and analysis."""

    name: str
    arm: str
    mix: list[MixComponent]
    candidate_mix: dict[str, float]
    fraction: float
    cpt: bool = False  # continued pretraining: 100% candidate data, no base mix
    seeds: list[int]  # seeds whose arm and control runs both finished
    trajectory: Trajectory | None = None  # its deltas at every eval point (eval.points)
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


class Pairing(BaseModel):
    """How much the arms of one design share with the control (from per-run primary scores)."""

    sphericity: float | None  # msd(arm - control) / msd(arm - arm'); 1 = exchangeable runs
    correlation: float | None  # arm-control correlation: 1 - var(arm - control) / (2 var(run))
    diff_sd: float | None  # sd over seeds of arm - control
    run_sd: float | None  # sd over seeds of one run
    arms: int
    seeds: int
    arm_arm_sd: float | None = None  # sd over seeds of arm - arm' (the sphericity's denominator)


class Method(BaseModel):
    """How the arms were decided (stated in the report)."""

    interval: str = "paired-difference t"
    confidence: float  # of each interval (lower than the study's with sequential looks)
    correction: str = "none"  # none | holm | bh, over the arms' primary and guard p-values
    primary_score: str = "mean"  # mean | standardized
    paired_streams: bool = False  # arms share their control's stream (common random numbers)
    pairing: dict[str, Pairing] = {}  # per design: what pairing bought, on the primary
    changed_after_results: list[
        str
    ] = []  # analysis fields changed after runs finished (--reanalyze)
    looks: int = 1  # seeds = "auto": analyses so far; each used alpha / max looks
    primary_tasks: list[str] = []


class ProbeInfo(BaseModel):
    """The study's SFT probe: settings, the control's and the start checkpoint's values."""

    sets: list[str]
    lrs: list[float]
    epochs: int
    seeds: list[int] | None  # SFT seeds per run (None: the run's own seed)
    tasks: bool
    domains: list[str]  # the base mix's held-out domains scored after SFT
    decide_on: Literal["base", "sft"]
    control: dict[str, list[float]] = {}  # per set: the control's SFT val loss per finished run
    start: dict[str, float] = {}  # per set: the start checkpoint's, after SFT ([sft_probe] start)
    noise_sd: float | None = None  # run-to-run sd of the SFT score not shared within a seed
    noise_df: int = 0
    runs: list[ProbeRun] = []  # the control's and the start checkpoint's probes


class MergeTask(BaseModel):
    merge: float
    seeds: list[float]


class MergeResult(BaseModel):
    """An arm's seeds merged: the merge against each seed and against their mean."""

    arm: str
    seeds: list[int]
    status: str  # done | missing (a seed or the merge's chain did not finish)
    checkpoint: str | None = None  # relative to the study folder
    metric: str
    merge_score: float | None = None  # primary score of the merged checkpoint
    seed_scores: list[float] = []
    per_seed_delta: list[float] = []  # merge minus each seed
    per_seed_ci: list[Interval] = []
    delta: float | None = None  # merge minus the mean of the seeds
    ci: Interval | None = None
    noise_sd: float | None = None
    noise_df: int = 0
    tasks: dict[str, MergeTask] = {}
    domains: dict[str, MergeTask] = {}  # bits per byte (lower is better)


class Versus(BaseModel):
    """One arm minus another on one score, from their paired per-seed differences (the
    run-to-run variance from these differences alone: df = seeds - 1)."""

    delta: float
    ci: Interval | None = None
    se: float | None = None
    df: float | None = None
    p: float | None = None  # two-sided, unadjusted (descriptive: not in the decision family)
    seeds: int


class CptContrast(BaseModel):
    """Midtraining against continued pretraining: a candidate's mixed arm minus its @cpt arm."""

    candidate: str
    arm: str  # NAME@fraction
    cpt_arm: str  # NAME@cpt
    metric: str  # the tasks' primary metric
    primary: Versus | None = None  # the tasks' primary score (higher is better)
    sft: Versus | None = None  # the SFT score: minus SFT val loss, mean over sets (higher better)
    forgetting: Versus | None = None  # bpb on the base mix after SFT, mean (lower is better)


class ImportInfo(BaseModel):
    """`midtrain study import`: where each run's records came from and what was not checked."""

    runs: dict[str, str]  # run name -> "checkpoint PATH" | "lm-eval samples of TASKS in DIR"
    start: str | None = None  # the start checkpoint's evaluation, or None (not imported)
    not_checked: list[str] = []  # what a study run here checks and an import cannot
    notes: list[str] = []  # what was skipped, and why


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
    probe: ProbeInfo | None = None
    merges: list[MergeResult] = []  # merge_seeds: each merged arm against its seeds
    versus_cpt: list[CptContrast] = []  # each mixed arm minus its candidate's @cpt arm
    trajectories: TrajectoryInfo | None = None  # the eval points, the control along them
    imported: ImportInfo | None = None  # `study import`: runs made elsewhere

    @classmethod
    def load(cls, path: str | Path) -> StudyResult:
        return cls.model_validate(read_json(path))

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.model_dump(mode="json"))

    @property
    def failed_runs(self) -> list[RunRecord]:
        runs = self.control.runs + [r for a in self.arms for r in a.runs]
        return [r for r in runs if r.status != "done"]

    @property
    def missing_probes(self) -> list[ProbeRun]:
        """SFT probes of finished runs that did not finish."""
        done = {r.name for r in self.control.runs + [r for a in self.arms for r in a.runs]
                if r.status == "done"}  # fmt: skip
        runs = (self.probe.runs if self.probe else []) + [
            r for a in self.arms if a.probe for r in a.probe.runs
        ]
        return [r for r in runs if r.status != "done" and r.run in done]

    @property
    def missing_merges(self) -> list[MergeResult]:
        """merge_seeds: merged arms whose seeds all finished but whose merge did not."""
        done = {a.arm: len(a.seeds) == len(a.runs) for a in self.arms}
        done[CONTROL_ARM] = all(r.status == "done" for r in self.control.runs)
        return [m for m in self.merges if m.status != "done" and done.get(m.arm)]
