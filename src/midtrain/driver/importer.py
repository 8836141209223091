"""`midtrain study import`: runs made elsewhere decided as a study run here is.

The import file is a study file (every field as `study run` reads it) plus an `[import]` table
mapping (arm, seed) to an HF checkpoint folder or to lm-eval `--log_samples` files
(docs/external.md). The study's plan is made as usual (`make_plan`, the imported seeds only);
each planned run becomes a chain of two jobs of its own kind:

- `import_run`: records where the run came from (`RUN/import.json`); its result stands in for the
  `train` stage's (tokens, FLOPs, wall time and loss unknown: None);
- its evaluation: midtrain's own `eval` stage on the imported checkpoint, or `import_samples`,
  which turns lm-eval's logged samples into the same per-example records (`eval/samples.py`: the
  code path of an in-process evaluation) without a model.

Then `collect` and the report run exactly as after `study run`; what an import cannot check is
said in `StudyResult.imported`.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from midtrain.errors import MidtrainError
from midtrain.eval.results import EvalResult, sort_key, summarise, to_json_line
from midtrain.io import atomic_write_json, atomic_write_text, hash_file, hash_obj, read_json
from midtrain.jobs import Job, Stage, pending, register, run_chain
from midtrain.schema import Strict
from midtrain.study.config import StudyConfig
from midtrain.study.import_file import (
    IMPORT_FORMAT,
    NOT_CHECKED,
    NOT_CHECKED_SAMPLES,
    ImportTable,
    Resolved,
    check_import,
    import_domains,
    load_import,
    start_source,
)
from midtrain.study.plan import RunSpec, StudyPlan, arm_names, make_plan
from midtrain.study.results import ImportInfo, StudyResult
from midtrain.train.rundir import write_status

# --- the two stages --------------------------------------------------------------------------


class RunImport(Strict):
    """The `import_run` stage's spec: what the run was imported from."""

    arm: str
    seed: int
    source: str  # "checkpoint PATH" or "lm-eval samples of TASKS in DIR"


class ImportedRun(BaseModel):
    """RUN/import.json: the `import_run` result, read where a `train` stage's would be."""

    format: str = IMPORT_FORMAT
    arm: str
    seed: int
    source: str
    tokens: int | None = None  # unknown: trained elsewhere
    flops: float | None = None
    wall_s: float | None = None
    final_loss: float | None = None


@register
class ImportRunStage(Stage):
    name = "import_run"
    Spec = RunImport
    Result = ImportedRun

    def run(self, spec: RunImport, out: Path) -> ImportedRun:
        res = ImportedRun(arm=spec.arm, seed=spec.seed, source=spec.source)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "import.json", res.model_dump(mode="json"))
        write_status(out, "done")
        return res

    def cached(self, spec: RunImport, out: Path) -> ImportedRun | None:
        f = out / "import.json"
        if not f.is_file():
            return None
        res = ImportedRun.model_validate(read_json(f))
        return (
            res if (res.arm, res.seed, res.source) == (spec.arm, spec.seed, spec.source) else None
        )


class SamplesJob(Strict):
    """The `import_samples` stage's spec: a run's lm-eval sample files by task."""

    files: dict[str, str]  # task -> its samples file
    key: str  # the files' content hashes


@register
class SamplesStage(Stage):
    """lm-eval's logged samples as an evaluation's records (examples.jsonl + eval.json)."""

    name = "import_samples"
    Spec = SamplesJob
    Result = EvalResult

    def run(self, spec: SamplesJob, out: Path) -> EvalResult:
        from midtrain.eval.samples import read_logged, task_records

        records = [r for task, f in sorted(spec.files.items())
                   for r in task_records(task, read_logged(Path(f)))]  # fmt: skip
        records.sort(key=sort_key)
        res = EvalResult(
            key=spec.key, checkpoint="", tasks=sorted(spec.files), include_path=None, domains={},
            settings={"samples": spec.files}, results=summarise(records), seconds=0.0, timing={},
        )  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "examples.jsonl", "".join(to_json_line(r) for r in records))
        atomic_write_json(out / "eval.json", res)
        return res

    def cached(self, spec: SamplesJob, out: Path) -> EvalResult | None:
        if not ((out / "eval.json").is_file() and (out / "examples.jsonl").is_file()):
            return None
        res = EvalResult.load(out)
        return res if res.key == spec.key else None


# --- the plan --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedRunSpec(RunSpec):
    """A planned run whose chain imports it and evaluates what was imported."""

    imported: Job | None = None
    evaluation: Job | None = None

    def chain(self, ev: Any = None) -> list[Job]:  # noqa: ARG002 - its evaluation is its own
        return [self.imported, self.evaluation]  # type: ignore[list-item]


@dataclass
class ImportedPlan(StudyPlan):
    start_job: Job | None = None

    def start_chain(self) -> list[Job]:
        """The start's evaluation when one was imported; else the plan's own (never run: not
        found, so `collect` has no start)."""
        return [self.start_job] if self.start_job is not None else super().start_chain()

    def chains(self) -> list[list[Job]]:
        runs = [r.chain() for r in self.runs]
        return ([[self.start_job]] if self.start_job is not None else []) + runs


def _evaluation(src: Resolved, name: str, dir: Path, plan: StudyPlan) -> Job:
    if src.checkpoint is not None:
        spec = plan.eval_job.model_copy(update={"checkpoint": str(src.checkpoint)})
        return Job.of("eval", name, dir, spec)
    key = hash_obj({t: hash_file(p) for t, p in sorted(src.samples.items())})
    files = {t: str(p) for t, p in sorted(src.samples.items())}
    return Job.of("import_samples", name, dir, SamplesJob(files=files, key=key))


def import_plan(cfg: StudyConfig, table: ImportTable, base: Path, out: Path
                ) -> tuple[ImportedPlan, ImportInfo]:  # fmt: skip
    """The study's plan for the imported seeds, each run a chain of import and evaluation;
    every check on input first (nothing is written)."""
    from midtrain.eval.lmeval import validate_tasks

    sources = check_import(cfg, table, base)
    all_ckpt = all(s.checkpoint is not None for s in sources.values())
    start = start_source(cfg, table, base, all_ckpt)
    notes: list[str] = []
    domains = import_domains(cfg, [*sources.values(), *([start] if start else [])], notes)
    cfg = cfg.model_copy(deep=True)
    cfg.eval.domains = domains
    if cfg.paired_streams:
        notes.append("paired_streams: not known for runs trained elsewhere; analysed as unpaired")
        cfg.paired_streams = False
    if any(s.checkpoint is not None for s in [*sources.values(), *([start] if start else [])]):
        include = Path(cfg.eval.include_path) if cfg.eval.include_path else None
        validate_tasks(cfg.eval.tasks, include, "eval.tasks", cfg.eval.allow_code_execution)
    seeds = {arm: [s for s in cfg.first_seeds if (arm, s) in sources] for arm in arm_names(cfg)}
    if left := [a for a, ss in seeds.items() if not ss]:
        notes.append(f"not imported, so not in the table: {', '.join(left)}")
    plan = make_plan(cfg, out, seeds)
    runs = []
    for r in plan.runs:
        src = sources[(r.arm, r.seed)]
        imported = Job.of("import_run", r.name, r.dir,
                          RunImport(arm=r.arm, seed=r.seed, source=src.describe()))  # fmt: skip
        base_fields = {f.name: getattr(r, f.name) for f in fields(RunSpec)}
        runs.append(ImportedRunSpec(**base_fields, imported=imported,
                                    evaluation=_evaluation(src, r.name, r.eval_dir, plan)))  # fmt: skip
    start_job = None
    if start is not None:
        start_job = _evaluation(start, "start checkpoint", plan.start_dir / "eval", plan)
    else:
        notes.append("no start checkpoint evaluation: what compares the control with the start "
                     "(control-regresses and the other anneal flags, the screening's signal) "
                     "was skipped; give [import.start]")  # fmt: skip
    kinds = {s.samples is not None for s in sources.values()}
    info = ImportInfo(
        runs={r.name: sources[(r.arm, r.seed)].describe() for r in runs},
        start=start.describe() if start else None,
        not_checked=NOT_CHECKED + (NOT_CHECKED_SAMPLES if True in kinds else []), notes=notes,
    )  # fmt: skip
    new = ImportedPlan(config=cfg, out=plan.out, runs=runs, eval_job=plan.eval_job,
                       start_dir=plan.start_dir, start_job=start_job)  # fmt: skip
    return new, info


# --- running it ------------------------------------------------------------------------------


def import_study(path: str | Path, out: str | Path) -> StudyResult:
    """Import the runs of `path` into the study folder `out`: records, results.json, report."""
    from midtrain.console import err_console, safe
    from midtrain.driver.collect import collect
    from midtrain.driver.runner import named_errors, study_lock
    from midtrain.report import write_report
    from midtrain.study.prereg import analysis_plan

    cfg, table, base = load_import(path)
    out = Path(out).resolve()
    _check_out(out)
    with named_errors(cfg):
        plan, info = import_plan(cfg, table, base, out)
    errors: dict[str, str] = {}
    with study_lock(out):
        atomic_write_json(out / "study.json", _study_record(plan, info, analysis_plan(plan.config)))
        chains = plan.chains()
        todo = [c for c in chains if pending(c)]
        err_console.print(f"study {safe(cfg.name)}: {len(chains)} imports, "
                          f"{len(chains) - len(todo)} already done")  # fmt: skip
        for chain in todo:
            o = run_chain(chain, attempts=1)
            if o.status == "failed":
                errors[o.name] = o.error or "failed"
                err_console.print(f"  [red]failed[/] {safe(o.name)}: {safe(o.error or '')}")
            else:
                err_console.print(f"  [green]done[/] {safe(o.name)} ({o.seconds or 0:.0f}s)")
        results = collect(plan, errors)
        _fix_records(results, plan)
        results.imported = info
        write_report(results, plan.config, out)
    return results


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass a folder for the study")
    record = out / "study.json"
    if record.is_file() and "imported" not in read_json(record):
        raise MidtrainError(f"--out {out} holds a study run here; import into another folder")


def _study_record(plan: ImportedPlan, info: ImportInfo, registered: dict) -> dict:
    runs = [{"name": r.name, "arm": r.arm, "seed": r.seed, "run_id": r.run_id,
             "dir": str(r.dir.relative_to(plan.out)), "mix": [m.model_dump() for m in r.mix]}
            for r in plan.runs]  # fmt: skip
    return {"config": plan.config.model_dump(mode="json"), "runs": runs,
            "analysis_plan": registered, "imported": info.model_dump(mode="json")}  # fmt: skip


def _fix_records(results: StudyResult, plan: ImportedPlan) -> None:
    """A run's checkpoint is the imported folder (None for samples), not RUN/final."""
    ckpt = {r.name: r.evaluation.spec.checkpoint for r in plan.runs if r.evaluation.stage == "eval"}
    for arm in [results.control, *results.arms]:
        for rec in arm.runs:
            rec.checkpoint = ckpt.get(rec.name) if rec.status == "done" else None
        if arm is not results.control:
            arm.checkpoints = [rec.checkpoint for rec in arm.runs if rec.checkpoint]
