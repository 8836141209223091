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
from midtrain.driver.collect import Finished, collect
from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_json, hash_obj
from midtrain.jobs import Outcome, pending
from midtrain.probe.jobs import plan_probes
from midtrain.schema import validate
from midtrain.study.config import CONTROL, StudyConfig, check_inputs
from midtrain.study.executors import make_executor
from midtrain.study.keep import check_readable
from midtrain.study.merging import merge_arms, merge_chains
from midtrain.study.plan import StudyPlan, arm_names, check_budget, make_plan, study_error
from midtrain.study.prereg import analysis_plan, check_plan, registered
from midtrain.study.results import StudyResult
from midtrain.study.reuse import reuse_runs


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
    """Every check that can fail on input, before anything is created. An error in the study
    file names the file and the study's field (`study.toml: base_max_repetition: ...`)."""
    if out.exists() and not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass a folder for the study")
    with named_errors(cfg):
        return _checked_plan(cfg, out)


@contextlib.contextmanager
def named_errors(cfg: StudyConfig) -> Iterator[None]:
    """A `MidtrainError` raised inside begins with the study file's name."""
    try:
        yield
    except MidtrainError as e:
        if not cfg.source or str(e).startswith(f"{cfg.source}: "):
            raise
        raise MidtrainError(f"{cfg.source}: {e}") from None


def _checked_plan(cfg: StudyConfig, out: Path) -> StudyPlan:
    from midtrain.eval.lmeval import validate_tasks
    from midtrain.train.plan import plan_run
    from midtrain.train.trackers import TrackersConfig, check_installed

    tracked = validate(TrackersConfig, cfg.train.get("trackers", []), prefix="train.trackers")
    check_installed(tracked.use, "train.trackers")  # before anything loads, on this machine
    stores = check_inputs(cfg)
    include = Path(cfg.eval.include_path) if cfg.eval.include_path else None
    validate_tasks(cfg.eval.tasks, include, "eval.tasks", cfg.eval.allow_code_execution)
    try:
        plan = make_plan(cfg, out)
    except MidtrainError as e:  # a run config built from the study: name the study's field
        raise MidtrainError(study_error(cfg, None, str(e))) from None
    check_budget(cfg, plan.runs, stores)
    checked: set[str] = set()
    for r in plan.runs:  # each distinct mix once: sizes, tokenizer match, geometry
        if (key := hash_obj([m.model_dump() for m in r.mix])) not in checked:
            checked.add(key)
            try:
                plan_run(r.run_config)
            except MidtrainError as e:
                raise MidtrainError(study_error(cfg, r, str(e))) from None
    plan_probes(cfg)  # each SFT set: rows, template, seq_len (on the start checkpoint)
    _check_merges(cfg, plan)
    for i, d in enumerate(cfg.reuse):
        if not (Path(d) / "study.json").is_file():
            raise MidtrainError(f"reuse[{i}]: {d} is not a study folder (no study.json); "
                                "name a folder written by `midtrain study run`")  # fmt: skip
    return plan


def _check_merges(cfg: StudyConfig, plan: StudyPlan) -> None:
    if not cfg.merge_seeds:
        return
    if isinstance(cfg.merge_seeds, list):
        known = [CONTROL, *plan.arms()]
        for name in cfg.merge_seeds:
            if name not in known:
                raise MidtrainError(f"merge_seeds: {name!r} is not an arm of this study; "
                                    f"use one of {', '.join(known)}")  # fmt: skip
    if len(cfg.first_seeds) < 2:
        raise MidtrainError("merge_seeds: needs at least 2 seeds per arm; set seeds = [0, 1]")
    if not merge_arms(cfg, plan.arms()):
        raise MidtrainError("merge_seeds: names no arm; give true or a list of arms")


def run_study(
    cfg: StudyConfig, out: Path, *, executor: str = "local", workers: int = 1,
    address: str | None = None, reanalyze: bool = False,
) -> StudyResult:  # fmt: skip
    """Run (or resume) a study and write results.json + the report. Returns the results.

    With seeds = "auto" the arms are analysed after every round of seeds, and only the
    inconclusive ones get another seed (and the control with them), up to analysis.max_seeds.
    """
    from midtrain.report import write_report

    out = Path(out).resolve()
    ex = make_executor(executor, workers, address, cfg.resources, out)
    plan = prepare(cfg, out)
    changed = check_plan(cfg, out, any(Finished.has_result(r) for r in plan.runs), reanalyze)
    registered_plan = (registered(out) if changed else None) or analysis_plan(cfg)
    seeds = {arm: list(cfg.first_seeds) for arm in arm_names(cfg)}
    errors: dict[str, str] = {}
    with study_lock(out):
        for look in range(1, cfg.looks + 1):
            plan = make_plan(cfg, out, seeds)
            record = _study_record(plan) | {"analysis_plan": registered_plan}
            if changed:
                record["reanalysis"] = {"plan": analysis_plan(cfg), "changed": changed}
            atomic_write_json(out / "study.json", record)
            reuse_runs(plan)
            errors |= _execute(plan, ex)
            results = collect(plan, errors, look)
            if not _add_seeds(cfg, results, seeds):
                break
        if cfg.merge_seeds:  # the merge chains need every seed of their arm
            errors |= _execute(plan, ex, merge_chains(plan, Finished(plan).done), "merges")
            results = collect(plan, errors, look)
        results.method.changed_after_results = changed
        write_report(results, plan.config, out)
    return results


def _execute(plan: StudyPlan, ex, chains: list | None = None, what: str = "jobs") -> dict[str, str]:
    """Run the plan's pending chains; the errors of those that failed, by run name."""
    chains = plan.chains() if chains is None else chains
    todo = [c for c in chains if pending(c)]
    check_readable(todo)  # a job that needs weights a keep policy removed: one line, first
    err_console.print(
        f"study {safe(plan.config.name)}: {len(chains)} {what}, {len(chains) - len(todo)} already done"
    )
    outcomes = ex.run(todo, lambda o: err_console.print(_outcome_line(o))) if todo else []
    return {o.name: o.error or "failed" for o in outcomes if o.status == "failed"}


def _add_seeds(cfg: StudyConfig, results: StudyResult, seeds: dict[str, list[int]]) -> bool:
    """seeds = "auto": one more seed for every inconclusive arm below max_seeds (and as many for
    the control); False when there is nothing to add."""
    if cfg.seeds != "auto":
        return False
    grow = [a.arm for a in results.arms if a.verdict == "inconclusive"]
    grow = [a for a in grow if len(seeds[a]) < cfg.analysis.max_seeds]
    for arm in grow:
        seeds[arm].append(len(seeds[arm]))
    most = max(len(v) for v in seeds.values())
    seeds[CONTROL] = list(range(most))
    if grow:
        err_console.print(f"seeds auto: one more seed for {', '.join(safe(a) for a in grow)}")
    return bool(grow)


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
    return f"  [red]failed[/] {safe(o.name)} ({o.stage}): {safe(o.error or '')} (in {safe(o.dir)})"


def run_reference(
    study_dir: Path, scale: int | None, workers: int = 1, reuse_seeds: bool = False
) -> Path:
    """Run the reference study of `study_dir` for `midtrain validate` (see
    `stats.validate.reference_config`); its folder."""
    from midtrain.stats.validate import reference_config

    ref, out = reference_config(study_dir, scale, reuse_seeds)
    run_study(ref, out, workers=workers)
    return out
