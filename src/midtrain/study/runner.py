"""Drive a study: validate, plan, lock the directory, execute the job chains, analyse, report.

The runner knows jobs and their typed results only: each run's `RunResult` and `EvalResult` come
back through its stages (`Job.cached()`), never by reading another stage's files.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from midtrain.console import err_console, safe
from midtrain.errors import MidtrainError
from midtrain.eval.results import Examples
from midtrain.io import atomic_write_json, hash_obj
from midtrain.jobs import Outcome, pending
from midtrain.study import analysis
from midtrain.study.config import StudyConfig, check_inputs
from midtrain.study.executors import make_executor
from midtrain.study.plan import RunSpec, StudyPlan, make_plan
from midtrain.study.results import (
    ArmResult,
    ControlResult,
    Cost,
    EvalInfo,
    RunRecord,
    StartPoint,
    StudyResult,
)
from midtrain.train.rundir import RunResult, read_status


@contextlib.contextmanager
def study_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on the study directory: one driving process at a time."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MidtrainError(
                f"{out} is being driven by another midtrain process; wait for it or use another --out"
            ) from None
        yield
    finally:
        os.close(fd)


def prepare(cfg: StudyConfig, out: Path) -> StudyPlan:
    """Every check that can fail on input, before anything is created."""
    from midtrain.eval.lmeval import validate_tasks
    from midtrain.train.plan import plan_run

    check_inputs(cfg)
    if out.exists() and not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass a folder for the study")
    include = Path(cfg.eval.include_path) if cfg.eval.include_path else None
    validate_tasks(cfg.eval.tasks, include, "eval.tasks")
    plan = make_plan(cfg, out)
    checked: set[str] = set()
    for r in plan.runs:  # each distinct mix once: sizes, repetition caps, tokenizer match
        if (key := hash_obj([m.model_dump() for m in r.mix])) not in checked:
            checked.add(key)
            plan_run(r.run_config)
    return plan


def run_study(
    cfg: StudyConfig, out: Path, *, executor: str = "local", workers: int = 1,
    address: str | None = None,
) -> StudyResult:  # fmt: skip
    """Run (or resume) a study and write results.json + the report. Returns the results."""
    from midtrain.report import write_report

    out = Path(out).resolve()
    ex = make_executor(executor, workers, address)
    plan = prepare(cfg, out)
    with study_lock(out):
        atomic_write_json(out / "study.json", _study_record(plan))
        chains = plan.chains()
        todo = [c for c in chains if pending(c)]
        err_console.print(
            f"study {safe(cfg.name)}: {len(chains)} jobs, {len(chains) - len(todo)} already done"
        )
        outcomes = ex.run(todo, lambda o: err_console.print(_outcome_line(o))) if todo else []
        errors = {o.name: o.error or "failed" for o in outcomes if o.status == "failed"}
        results = collect(plan, errors)
        write_report(results, plan.config, out)
    return results


def _study_record(plan: StudyPlan) -> dict:
    """study.json: the validated config and every run's identity and folder."""
    runs = [
        {"name": r.name, "arm": r.arm, "seed": r.seed, "run_id": r.run_id,
         "dir": str(r.dir.relative_to(plan.out)), "mix": [m.model_dump() for m in r.mix]}
        for r in plan.runs
    ]  # fmt: skip
    return {"config": plan.config.model_dump(mode="json"), "runs": runs}


def _outcome_line(o: Outcome) -> str:
    if o.status == "done":
        took = f" ({o.seconds:.0f}s)" if o.seconds is not None else ""
        return f"  [green]done[/] {safe(o.name)}{took}"
    return f"  [red]failed[/] {safe(o.name)} ({o.stage}): {safe(o.error or '')}  [{safe(o.dir)}]"


# -- collecting typed results ----------------------------------------------------------------------


class _Finished:
    """The typed results of each run's chain (train, eval), read back through its jobs."""

    def __init__(self, plan: StudyPlan, errors: dict[str, str] | None = None):
        self.plan, self.errors = plan, errors or {}
        self.train: dict[str, RunResult | None] = {}
        self.evals: dict[str, Examples | None] = {}
        for r in plan.runs:
            train_job, eval_job = r.chain(plan.eval_job)
            self.train[r.name] = train_job.cached()  # type: ignore[assignment]
            ev = eval_job.cached() if self.train[r.name] else None
            self.evals[r.name] = Examples.load(r.eval_dir) if ev is not None else None
        start = plan.start_chain()[0]
        self.start = Examples.load(Path(start.dir)) if start.cached() is not None else None

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
        return RunRecord(
            name=r.name, arm=r.arm, seed=r.seed, run_id=r.run_id, dir=str(r.dir.relative_to(out)),
            status=state, error=None if ok else error,
            checkpoint=str((r.dir / "final").relative_to(out)) if ok else None,
            tokens=res.tokens if res else None, flops=res.flops if res else None,
            wall_s=res.wall_s if res else None, final_loss=res.final_loss if res else None,
        )  # fmt: skip


def _cost(records: list[RunRecord], full: int | None) -> Cost:
    tok = sum(r.tokens or 0 for r in records)
    return Cost(
        runs=len(records), tokens=tok, flops=sum(r.flops or 0 for r in records),
        wall_s=round(sum(r.wall_s or 0 for r in records), 2),
        share_of_full_run=tok / full if full else None,
    )  # fmt: skip


def collect(plan: StudyPlan, errors: dict[str, str] | None = None) -> StudyResult:
    """Analyse every arm against the control of the same seed (the content of results.json).

    `errors` maps a run's name to why its chain failed in this invocation.
    """
    cfg, f = plan.config, _Finished(plan, errors)
    tasks, primary = list(cfg.eval.tasks), cfg.analysis.primary
    control = _control(plan, f)
    ctrl_evals = [f.evals[r.name] for r in plan.controls() if f.done(r)]
    start = _start_point(f.start, ctrl_evals, tasks, primary)
    flags = _study_flags(cfg, start, control)
    return StudyResult(
        study=cfg.name, control=control, start=start,
        arms=[_arm(plan, f, arm, flags) for arm in plan.arms()],
        eval=EvalInfo(include_path=cfg.eval.include_path, tasks=tasks, domains=cfg.domain_names,
                      primary_metric=primary, limit=cfg.eval.limit,
                      num_fewshot=cfg.eval.num_fewshot),
        confidence=cfg.analysis.confidence, study_flags=flags,
    )  # fmt: skip


def _control(plan: StudyPlan, f: _Finished) -> ControlResult:
    cfg = plan.config
    tasks, primary = list(cfg.eval.tasks), cfg.analysis.primary
    done = [r for r in plan.controls() if f.done(r)]
    evals = [f.evals[r.name] for r in done]
    records = [f.record(r) for r in plan.controls()]
    return ControlResult(
        seeds=[r.seed for r in done],
        runs=records,
        noise_floor=analysis.noise_floor(evals, tasks, primary) if evals else None,
        scores={t: [e.score(t, primary) for e in evals] for t in tasks},
        domains={d: [e.domain_bpb(d) for e in evals if d in e.domains] for d in cfg.domain_names},
        cost=_cost(records, cfg.full_run_tokens),
    )


def _arm(plan: StudyPlan, f: _Finished, arm: str, study_flags: list[str]) -> ArmResult:
    cfg = plan.config
    runs = plan.arm_runs(arm)
    ok = [(r, plan.control(r.seed)) for r in runs if f.done(r) and f.done(plan.control(r.seed))]
    cand = next(c for c in cfg.candidates if c.name == runs[0].candidate)
    records = [f.record(r) for r in runs]
    if ok:
        result = analysis.analyse_arm(
            [f.evals[r.name] for r, _ in ok], [f.evals[c.name] for _, c in ok],
            tasks=list(cfg.eval.tasks), domains=cfg.domain_names, primary=cfg.analysis.primary,
            candidate_sources=sorted(cand.mix), guards=cfg.guards, iters=cfg.analysis.bootstrap,
            confidence=cfg.analysis.confidence,
        )  # fmt: skip
        result.flags += study_flags
    else:
        result = analysis.ArmAnalysis(verdict="failed", reason="no arm/control pair finished")
    return ArmResult(
        **result.model_dump(), name=cand.name, arm=arm, mix=runs[0].mix, candidate_mix=cand.mix,
        fraction=runs[0].fraction, seeds=[r.seed for r, _ in ok], runs=records,
        checkpoints=[f.record(r).checkpoint or "" for r, _ in ok],
        cost=_cost(records, cfg.full_run_tokens),
    )  # fmt: skip


def _start_point(
    start: Examples | None, ctrl_evals: list[Examples], tasks: list[str], metric: str
) -> StartPoint:
    if start is None or not tasks:
        return StartPoint()
    s = analysis.primary_score(start, tasks, metric)
    c = [analysis.primary_score(e, tasks, metric) for e in ctrl_evals]
    return StartPoint(
        primary=s,
        control_gain=(sum(c) / len(c) - s) if c else None,
        tasks={t: start.score(t, metric) for t in tasks if t in start.tasks},
    )


def _study_flags(cfg: StudyConfig, start: StartPoint, control: ControlResult) -> list[str]:
    from midtrain.train.checkpoint import read_trainer_state

    flags = []
    seen = cfg.checkpoint_tokens
    if seen is None and (state := read_trainer_state(cfg.checkpoint)) is not None:
        seen = state.tokens_seen
    if cfg.full_run_tokens and seen is not None:
        if seen / cfg.full_run_tokens < cfg.analysis.min_checkpoint_progress:
            flags.append("checkpoint-too-early")
    gain = start.control_gain
    sd = control.noise_floor.primary_sd if control.noise_floor else None
    if analysis.is_finite(gain) and analysis.is_finite(sd) and abs(gain) < 2 * sd:
        flags.append("anneal-too-short")
    return flags
