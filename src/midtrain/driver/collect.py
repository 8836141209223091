"""Collect a study's typed results: finished runs in, `StudyResult` (results.json) out.

Each run's `RunResult` and per-example records come back through its own jobs (`Job.cached()`),
never by reading another stage's files. Every finished run counts: the analysis is unpaired (an
arm and its control see different data streams), so an arm whose control seed failed still
uses its other runs.
"""

from __future__ import annotations

from pathlib import Path

from midtrain.eval.results import Examples
from midtrain.stats import analysis, merged, probe_gains, trajectory, versus_cpt
from midtrain.stats.data import StudyData
from midtrain.stats.flags import anneal_flags, predicted_gain_flags
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.plan import RunSpec, StudyPlan
from midtrain.study.results import (
    ArmAnalysis,
    ArmResult,
    ControlResult,
    Cost,
    EvalInfo,
    Method,
    NoiseFloor,
    RunRecord,
    StartPoint,
    StudyResult,
)
from midtrain.study.trajectory_results import TrajectoryInfo
from midtrain.train.checkpoint import read_trainer_state
from midtrain.train.rundir import RunResult, read_status


class Finished:
    """The typed results of each run's chain (train, eval), read back through its jobs."""

    def __init__(self, plan: StudyPlan, errors: dict[str, str] | None = None):
        self.plan, self.errors = plan, errors or {}
        self.train: dict[str, RunResult | None] = {}
        self.evals: dict[str, Examples | None] = {}
        self.points: dict[str, dict[int, Examples]] = {}  # run -> {step: its point's records}
        self.eval_seconds = 0.0  # every finished evaluation of the runs and the start
        for r in plan.runs:
            train_job, eval_job = r.chain(plan.eval_job)
            self.train[r.name] = train_job.cached()  # type: ignore[assignment]
            ev = eval_job.cached() if self.train[r.name] else None
            self.evals[r.name] = Examples.load(r.eval_dir) if ev is not None else None
            self.eval_seconds += ev.seconds if ev is not None else 0.0
            self.points[r.name] = {}
            for p, job in zip(r.points, r.point_jobs(plan.eval_job), strict=False):
                if self.train[r.name] and (pe := job.cached()) is not None:
                    self.points[r.name][p.step] = Examples.load(Path(job.dir))
                    self.eval_seconds += pe.seconds  # type: ignore[attr-defined]
        start = plan.start_chain()[0]
        cached = start.cached()
        self.start = Examples.load(Path(start.dir)) if cached is not None else None
        self.eval_seconds += cached.seconds if cached is not None else 0.0  # type: ignore[attr-defined]

    @staticmethod
    def has_result(r: RunSpec) -> bool:
        """Whether the run's evaluation finished (results exist), without loading anything."""
        return (r.eval_dir / "eval.json").is_file()

    def done(self, r: RunSpec) -> bool:
        return self.evals[r.name] is not None

    def record(self, r: RunSpec) -> RunRecord:
        res, out, ok = self.train[r.name], self.plan.out, self.done(r)
        status = read_status(r.dir)
        if ok:
            state = "done"
        elif status is not None and status.status != "done":
            state = status.status  # failed (diverged), interrupted, running
        else:
            state = "failed" if r.name in self.errors or res is not None else "missing"
        error = self.errors.get(r.name) or (status.reason if status else None)
        if error is None and res is not None and not ok:
            error = "trained, but its evaluation did not finish; run the study again"
        return RunRecord(
            name=r.name, arm=r.arm, seed=r.seed, run_id=r.run_id, dir=str(r.dir.relative_to(out)),
            status=state, error=None if ok else error,
            checkpoint=str((r.dir / "final").relative_to(out)) if ok else None,
            tokens=res.tokens if res else None, flops=res.flops if res else None,
            wall_s=res.wall_s if res else None, final_loss=res.final_loss if res else None,
        )  # fmt: skip

    def data(self) -> StudyData:
        """Finished runs by group (with their seeds); groups without a finished run are left out."""
        groups: dict[str, list[Examples]] = {}
        seeds: dict[str, list[int]] = {}
        designs = {r.arm: ("cpt" if r.cpt else f"{r.fraction:g}") for r in self.plan.runs}
        for r in self.plan.runs:
            if self.done(r):
                groups.setdefault(r.arm, []).append(self.evals[r.name])
                seeds.setdefault(r.arm, []).append(r.seed)
        return StudyData(groups, self.start, seeds, designs)


def cost(records: list[RunRecord], full: int | None) -> Cost:
    tok = sum(r.tokens or 0 for r in records)
    return Cost(
        runs=len(records), tokens=tok, flops=sum(r.flops or 0 for r in records),
        wall_s=round(sum(r.wall_s or 0 for r in records), 2),
        share_of_full_run=tok / full if full else None,
    )  # fmt: skip


def collect(plan: StudyPlan, errors: dict[str, str] | None = None, look: int = 1) -> StudyResult:
    """Analyse every arm against the control (the content of results.json).

    `errors` maps a run's name to why its chain failed in this invocation; `look` counts the
    analyses of a seeds = "auto" study so far.
    """
    cfg, f = plan.config, Finished(plan, errors)
    metric, conf = cfg.analysis.primary, analysis.confidence_at(cfg, look)
    data = f.data()
    screen, noise, start, pairs = [], None, StartPoint(), {}
    if CONTROL in data.groups and cfg.eval.tasks:
        screen = analysis.screen_tasks(data, cfg)
    primary_tasks = [s.task for s in screen if s.in_primary] or list(cfg.eval.tasks)
    flags = _study_flags(cfg)
    if CONTROL in data.groups:
        noise = analysis.pooled_noise(data, primary_tasks, metric, conf)
        start = analysis.start_point(data, primary_tasks, metric, noise, conf)
        pairs = analysis.pairing(data, primary_tasks, metric)
        base = [d for d in cfg.base if d in cfg.domain_names]
        flags += anneal_flags(data, base, start, conf)
        if noise.df == 0:
            flags.append("no-seed-noise")
    arms = [_arm(plan, f, data, arm, primary_tasks, flags, conf) for arm in plan.arms()]
    predicted_gain_flags([a for a in arms if a.verdict != "failed"])
    probe, probe_data = None, None
    if cfg.sft_probe is not None:  # the SFT probe of every run; it may decide the verdicts
        probe_data = probe_gains.load(plan, f)
        probe_gains.apply(arms, probe_data, cfg, conf)
        probe = probe_gains.info(probe_data, plan, plan.controls())
    analysis.decide([a for a in arms if a.verdict != "failed"], cfg.analysis.correction,
                    1 - conf, cfg.analysis.allow_task_regression)  # fmt: skip
    if cfg.seeds == "auto":
        _adjust_for_looks(cfg, arms)
    tinfo = _trajectories(plan, f, arms, screen, flags, primary_tasks, conf)
    merges = merged.compare(plan, f, primary_tasks, noise) if cfg.merge_seeds else []
    versus = versus_cpt.contrasts(data, probe_data, cfg, arms, conf)
    return StudyResult(
        study=cfg.name, control=_control(plan, f, data, noise), start=start, arms=arms,
        eval=EvalInfo(include_path=cfg.eval.include_path, tasks=list(cfg.eval.tasks),
                      domains=cfg.domain_names, primary_metric=metric, limit=cfg.eval.limit,
                      num_fewshot=cfg.eval.num_fewshot),
        confidence=conf, study_flags=flags, screen=screen, probe=probe, merges=merges,
        versus_cpt=versus, trajectories=tinfo,
        method=Method(confidence=conf, correction=cfg.analysis.correction, looks=look,
                      primary_tasks=primary_tasks, primary_score=cfg.analysis.primary_score,
                      paired_streams=cfg.paired_streams, pairing=pairs),
    )  # fmt: skip


def _trajectories(plan: StudyPlan, f: Finished, arms: list[ArmResult], screen: list,
                  flags: list[str], primary_tasks: list[str], conf: float) -> TrajectoryInfo:  # fmt: skip
    """Each arm's trajectory over the eval points (and `still-moving`), the control's base-domain
    loss along them, `anneal-too-short` read from both, the late-point noise of each task."""
    cfg = plan.config
    points = trajectory.point_data(plan, f)
    base = [d for d in cfg.base if d in cfg.domain_names]
    records = [f.record(r) for r in plan.runs]
    tinfo = trajectory.info(plan, points, f, base, conf, records)
    if not points:  # eval.points = [1.0]: the end alone, as before points existed
        return tinfo
    for a in arms:
        if a.verdict == "failed":
            continue
        a.trajectory = trajectory.arm_trajectory(points, a.arm, cfg, primary_tasks,
                                                 sorted(a.candidate_mix), conf)  # fmt: skip
        if a.trajectory is not None and a.trajectory.still_moving:
            a.flags.append("still-moving")
    why = trajectory.too_short(tinfo.control, arms)
    if why is None and "anneal-too-short" in flags:
        why = "the control's base-domain loss did not fall measurably below the start's"
    tinfo.anneal_too_short = why
    if why is not None and "anneal-too-short" not in flags:
        flags.append("anneal-too-short")
        for a in arms:
            a.flags.append("anneal-too-short")
    trajectory.late_noise(screen, points, cfg.analysis.primary)
    return tinfo


def _control(plan: StudyPlan, f: Finished, data: StudyData,
             noise: NoiseFloor | None) -> ControlResult:  # fmt: skip
    cfg = plan.config
    done = data.groups.get(CONTROL, [])
    records = [f.record(r) for r in plan.controls()]
    metric = {t: cfg.analysis.primary if data.has(t, cfg.analysis.primary) else "score"
              for t in cfg.eval.tasks}  # fmt: skip
    return ControlResult(
        seeds=[r.seed for r in plan.controls() if f.done(r)], runs=records, noise_floor=noise,
        scores={t: [e.score(t, metric[t]) for e in done] for t in cfg.eval.tasks},
        domains={d: [e.domain_bpb(d) for e in done if d in e.domains] for d in cfg.domain_names},
        cost=cost(records, cfg.full_run_tokens),
    )  # fmt: skip


def _arm(plan: StudyPlan, f: Finished, data: StudyData, arm: str,
         primary_tasks: list[str], study_flags: list[str], conf: float) -> ArmResult:  # fmt: skip
    cfg = plan.config
    runs = plan.arm_runs(arm)
    cand = next(c for c in cfg.candidates if c.name == runs[0].candidate)
    records = [f.record(r) for r in runs]
    if arm in data.groups and CONTROL in data.groups:
        result = analysis.analyse_arm(data, arm, cfg, primary_tasks, sorted(cand.mix), conf)
        result.flags += study_flags
    else:
        why = "no run of this arm finished" if arm not in data.groups else "no control run finished"
        result = ArmAnalysis(verdict="failed", reason=why)
    return ArmResult(
        **result.model_dump(), name=cand.name, arm=arm, mix=runs[0].mix, candidate_mix=cand.mix,
        fraction=runs[0].fraction, cpt=runs[0].cpt, seeds=[r.seed for r in runs if f.done(r)],
        runs=records,
        checkpoints=[rec.checkpoint for rec in records if rec.checkpoint],
        cost=cost(records, cfg.full_run_tokens),
    )  # fmt: skip


def checkpoint_seen(cfg: StudyConfig) -> int | None:
    """The tokens the start checkpoint has seen: checkpoint_tokens, else its midtrain_state."""
    seen = cfg.checkpoint_tokens
    if seen is None and (state := read_trainer_state(cfg.checkpoint)) is not None:
        seen = state.tokens_seen
    return seen


def _study_flags(cfg: StudyConfig) -> list[str]:
    """`checkpoint-too-early`: the start checkpoint has seen less than min_checkpoint_progress of
    the full run (the flags on the anneal itself are `flags.anneal_flags`)."""
    seen = checkpoint_seen(cfg)
    if cfg.full_run_tokens and seen is not None:
        if seen / cfg.full_run_tokens < cfg.analysis.min_checkpoint_progress:
            return ["checkpoint-too-early"]
    return []


def _adjust_for_looks(cfg: StudyConfig, arms: list[ArmResult]) -> None:
    """seeds = "auto": each arm's primary delta also bias-adjusted for where it stopped."""
    from midtrain.stats.sequential import bias_adjusted, look_levels

    info, levels = look_levels(cfg.analysis.confidence, cfg.analysis.max_seeds, cfg.looks)
    for a in arms:
        p = a.primary
        if p is None or p.se is None or len(a.seeds) < 2:
            continue
        stop = min(len(a.seeds) - 2, len(info) - 1)
        p.delta_adjusted = bias_adjusted(p.delta, p.se, info, levels, stop)
