"""Drive a study: validate, plan, lock the directory, execute the runs, analyse, report."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_json, hash_obj, read_json
from midtrain.study import analysis
from midtrain.study.config import StudyConfig, check_inputs_exist
from midtrain.study.executors import EXECUTORS
from midtrain.study.plan import CONTROL, StudyPlan, make_plan

console = Console(stderr=True)


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
    check_inputs_exist(cfg)
    if cfg.eval.tasks:
        from midtrain.evaluation import validate_tasks

        validate_tasks(
            cfg.eval.tasks, Path(cfg.eval.include_path) if cfg.eval.include_path else None
        )
    plan = make_plan(cfg, out)
    from midtrain import train

    checked: set[str] = set()
    for r in plan.runs:  # each distinct mix once: sizes, repetition caps, tokenizer match
        if (key := hash_obj(r.mix)) not in checked:
            checked.add(key)
            train.dry_run(train.load_run_config(r.run_config))
    return plan


def dry_run_rows(plan: StudyPlan) -> list[dict[str, Any]]:
    """One row per run: mix, tokens, estimated FLOPs and seconds, share of full_run_tokens."""
    from midtrain import train

    rows = []
    for r in plan.runs:
        run_plan = train.plan_run(train.load_run_config(r.run_config))
        est = train.dry_run(run_plan)
        rows.append(
            {
                "run": r.name,
                "dir": str(r.dir),
                "mix": {m["source"]: m["ratio"] for m in r.mix},
                "tokens": plan.config.tokens,
                "flops": est.get("flops"),
                "seconds": est.get("seconds"),
                "share_of_full_run": (
                    plan.config.tokens / plan.config.full_run_tokens
                    if plan.config.full_run_tokens
                    else None
                ),
                "token_table": run_plan.sampler.token_table(),
            }
        )
    return rows


def run_study(
    cfg: StudyConfig,
    out: Path,
    *,
    executor: str = "local",
    workers: int = 1,
    address: str | None = None,
) -> dict[str, Any]:
    """Run (or resume) a study and write results.json + the report. Returns the results."""
    out = Path(out).resolve()
    ex = _make_executor(executor, workers, address)
    plan = prepare(cfg, out)
    with study_lock(out):
        atomic_write_json(
            out / "study.json",
            {
                "config": cfg.model_dump(mode="json"),
                "runs": [
                    {
                        "name": r.name,
                        "arm": r.arm,
                        "seed": r.seed,
                        "run_id": r.run_id,
                        "dir": str(r.dir.relative_to(out)),
                        "mix": r.mix,
                    }
                    for r in plan.runs
                ],
            },
        )
        jobs = [plan.base_eval] + [r.job() for r in plan.runs]
        todo = [j for j in jobs if not _finished(j)]
        console.print(f"study {cfg.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} already done")
        if todo:
            ex.run(todo, lambda o: console.print(_outcome_line(o)))
        results = collect_results(plan)
        from midtrain.study.report import write_report

        write_report(results, plan, out)
    return results


def _make_executor(name: str, workers: int, address: str | None):
    if name not in EXECUTORS:
        raise MidtrainError(f"--executor {name!r} is unknown; use one of {', '.join(EXECUTORS)}")
    if name == "ray":
        return EXECUTORS[name](address=address)
    return EXECUTORS[name](workers=workers)


def _finished(job: dict[str, Any]) -> bool:
    d = Path(job["dir"])
    ev = d / "eval" / "eval.json"
    if job["train"] is None:
        return ev.is_file()
    status = d / "status.json"
    return ev.is_file() and status.is_file() and read_json(status).get("status") == "done"


def _outcome_line(o: dict[str, Any]) -> str:
    if o["status"] == "done":
        took = f" ({o['seconds']:.0f}s)" if o.get("seconds") is not None else ""
        return f"  [green]done[/] {o['name']}{took}"
    return f"  [red]failed[/] {o['name']}: {o.get('error', '')}"


def _load_eval(d: Path) -> analysis.RunEval | None:
    return analysis.RunEval.load(d / "eval") if (d / "eval" / "examples.jsonl").is_file() else None


def _run_record(r, out: Path) -> dict[str, Any]:
    status_p, metrics_p = r.dir / "status.json", r.dir / "metrics.json"
    status = read_json(status_p) if status_p.is_file() else {"status": "missing"}
    metrics = read_json(metrics_p) if metrics_p.is_file() else {}
    ok = status.get("status") == "done" and (r.dir / "eval" / "examples.jsonl").is_file()
    return {
        "name": r.name,
        "arm": r.arm,
        "seed": r.seed,
        "run_id": r.run_id,
        "dir": str(r.dir.relative_to(out)),
        "status": "done" if ok else status.get("status", "failed"),
        "error": status.get("error"),
        "checkpoint": str((r.dir / "final").relative_to(out)) if ok else None,
        "tokens": metrics.get("tokens"),
        "flops": metrics.get("flops"),
        "wall_s": metrics.get("wall_s"),
        "final_loss": metrics.get("final_loss"),
    }


def _cost(records: list[dict[str, Any]], full: int | None) -> dict[str, Any]:
    tok = sum(r["tokens"] or 0 for r in records)
    return {
        "runs": len(records),
        "tokens": tok,
        "flops": sum(r["flops"] or 0 for r in records),
        "wall_s": round(sum(r["wall_s"] or 0 for r in records), 2),
        "share_of_full_run": tok / full if full else None,
    }


def collect_results(plan: StudyPlan) -> dict[str, Any]:
    """Analyse every arm against the control of the same seed; returns the results.json content."""
    cfg, out = plan.config, plan.out
    a = cfg.analysis
    tasks, domains = list(cfg.eval.tasks), cfg.domain_names
    records = {r.name: _run_record(r, out) for r in plan.runs}
    evals = {r.name: _load_eval(r.dir) for r in plan.runs}
    start_eval = _load_eval(Path(plan.base_eval["dir"]))
    ctrl_runs = [r for r in plan.runs if r.arm == CONTROL and records[r.name]["status"] == "done"]
    ctrl_evals = [evals[r.name] for r in ctrl_runs]
    noise = analysis.noise_floor(ctrl_evals, tasks, a.primary) if ctrl_evals else {}
    control = {
        "seeds": [r.seed for r in ctrl_runs],
        "runs": [records[r.name] for r in plan.runs if r.arm == CONTROL],
        "noise_floor": noise,
        "scores": {t: [e.score(t, a.primary) for e in ctrl_evals] for t in tasks},
        "domains": {
            d: [
                float(sum(v["bpb"] for v in e.domains[d].values()) / len(e.domains[d]))
                for e in ctrl_evals
                if d in e.domains
            ]
            for d in domains
        },
        "cost": _cost(
            [records[r.name] for r in plan.runs if r.arm == CONTROL], cfg.full_run_tokens
        ),
    }
    start = _start_point(start_eval, ctrl_evals, tasks, a.primary)
    results: dict[str, Any] = {
        "study": cfg.name,
        "control": control,
        "start": start,
        "arms": [],
        "eval": {
            "include_path": cfg.eval.include_path,
            "tasks": tasks,
            "domains": domains,
            "primary_metric": a.primary,
            "limit": cfg.eval.limit,
            "num_fewshot": cfg.eval.num_fewshot,
        },
        "confidence": a.confidence,
        "study_flags": _study_flags(cfg, plan, start, noise),
    }
    by_cand = {c.name: c for c in cfg.candidates}
    for arm in plan.arms():
        runs = plan.arm_runs(arm)
        pairs = [(r, plan.control(r.seed)) for r in runs]
        ok = [
            (r, c)
            for r, c in pairs
            if records[r.name]["status"] == "done" and records[c.name]["status"] == "done"
        ]
        cand = by_cand[runs[0].candidate]
        entry: dict[str, Any] = {
            "name": cand.name,
            "arm": arm,
            "mix": runs[0].mix,
            "candidate_mix": cand.mix,
            "fraction": runs[0].fraction,
            "seeds": [r.seed for r, _ in ok],
            "runs": [records[r.name] for r in runs],
            "checkpoints": [records[r.name]["checkpoint"] for r, _ in ok],
            "cost": _cost([records[r.name] for r in runs], cfg.full_run_tokens),
        }
        if not ok:
            entry.update(
                verdict="failed",
                reason="no arm/control pair finished",
                flags=[],
                primary=None,
                tasks={},
                domains={},
            )
        else:
            entry.update(
                analysis.analyse_arm(
                    [evals[r.name] for r, _ in ok],
                    [evals[c.name] for _, c in ok],
                    tasks=tasks,
                    domains=domains,
                    primary=a.primary,
                    candidate_sources=sorted(cand.mix),
                    guards=[g.model_dump() for g in cfg.guards],
                    iters=a.bootstrap,
                    confidence=a.confidence,
                )
            )
            entry["flags"] += results["study_flags"]
        results["arms"].append(entry)
    return results


def _start_point(start_eval, ctrl_evals, tasks: list[str], metric: str) -> dict[str, Any]:
    if start_eval is None or not tasks:
        return {}
    s = analysis.primary_score(start_eval, tasks, metric)
    c = [analysis.primary_score(e, tasks, metric) for e in ctrl_evals]
    return {
        "primary": s,
        "control_gain": (sum(c) / len(c) - s) if c else None,
        "tasks": {t: start_eval.score(t, metric) for t in tasks if t in start_eval.tasks},
    }


def _study_flags(
    cfg: StudyConfig, plan: StudyPlan, start: dict[str, Any], noise: dict[str, Any]
) -> list[str]:
    flags = []
    seen = cfg.checkpoint_tokens
    state = Path(cfg.checkpoint) / "midtrain_state" / "trainer.json"
    if seen is None and state.is_file():
        seen = read_json(state).get("tokens_seen")
    if cfg.full_run_tokens and seen is not None:
        if seen / cfg.full_run_tokens < cfg.analysis.min_checkpoint_progress:
            flags.append("checkpoint-too-early")
    gain, sd = start.get("control_gain"), noise.get("primary_sd")
    if analysis.is_finite(gain) and analysis.is_finite(sd) and abs(gain) < 2 * sd:
        flags.append("anneal-too-short")
    return flags
