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

import glob
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from pydantic import BaseModel, model_validator

from midtrain.errors import MidtrainError
from midtrain.eval.results import EvalResult, sort_key, summarise, to_json_line
from midtrain.io import atomic_write_json, atomic_write_text, hash_file, hash_obj, read_json
from midtrain.jobs import Job, Stage, pending, register, run_chain
from midtrain.schema import Strict, field, load_toml, validate
from midtrain.study.config import CONTROL, StudyConfig, parse_study
from midtrain.study.plan import RunSpec, StudyPlan, arm_names, make_plan
from midtrain.study.results import ImportInfo, StudyResult
from midtrain.train.rundir import write_status

IMPORT_FORMAT = "midtrain-import/1"
NOT_CHECKED = [
    "data order, token counts and the mix: the runs were trained elsewhere (each arm's mix is the "
    "study's, as declared)",
    "the start: that every run started from the study's checkpoint with its schedule",
    "tokens, FLOPs, wall time and training loss: unknown (the cost table counts 0)",
]
NOT_CHECKED_SAMPLES = [
    "lm-eval samples: the model and tokenizer that wrote them, and the prompts lm-eval used "
    "(few-shot and limit are checked against its results_DATE.json where it lies beside them)",
]


class Source(Strict):
    """Where one run's (or the start's) evaluation comes from: exactly one of the two."""

    checkpoint: str | None = field(
        None, description="An HF causal-LM folder: evaluated here as `study run` evaluates."
    )
    samples: list[str] | None = field(
        None,
        description="lm-eval `--log_samples` files (samples_TASK_DATE.jsonl; globs allowed), "
        "one per task of eval.tasks.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        if (self.checkpoint is None) == (self.samples is None):
            both = "both" if self.checkpoint is not None else "neither"
            raise ValueError(f"has {both} of checkpoint and samples; give exactly one: "
                             "checkpoint = '...' or samples = ['...']")  # fmt: skip
        if self.samples is not None and not self.samples:
            raise ValueError("samples is empty; name the run's samples_TASK_DATE.jsonl files")
        return self


class ImportRun(Source):
    """[[import.runs]]: one run of the study made elsewhere."""

    arm: str = field(description="control, or an arm of the study (NAME@FRACTION, NAME@cpt).")
    seed: int = field(description="One of the study's seeds.")


class ImportTable(Strict):
    """[import]: the runs (and optionally the start checkpoint's evaluation) made elsewhere."""

    runs: list[ImportRun] = field(min_length=1, description="[[import.runs]]: one per run.")
    start: Source | None = field(
        None,
        description="The start checkpoint's evaluation (default: the study's checkpoint, "
        "evaluated here when every run is a checkpoint and it is an HF folder).",
    )


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


@dataclass
class Resolved:
    """One source checked: a checkpoint folder, or a samples file per task."""

    checkpoint: Path | None = None
    samples: dict[str, Path] | None = None

    def describe(self) -> str:
        if self.checkpoint is not None:
            return f"checkpoint {self.checkpoint}"
        dirs = sorted({str(p.parent) for p in self.samples.values()})
        return f"lm-eval samples of {', '.join(sorted(self.samples))} in {', '.join(dirs)}"


# --- reading and checking the import file ----------------------------------------------------

UNSUPPORTED = {  # study fields an import cannot honour, and why
    "sft_probe": "SFT probes fine-tune each run's checkpoint here; remove [sft_probe]",
    "merge_seeds": "merging averages the runs' checkpoints here; remove merge_seeds",
    "starts": "a timing grid trains from each start here; import one start per study file",
    "reuse": "reuse hard-links runs trained here; remove reuse",
}


def load_import(path: str | Path) -> tuple[StudyConfig, ImportTable, Path]:
    """The study (its own fields) and the [import] table of an import file; paths resolved
    against the file's folder."""
    path = Path(path)
    data = load_toml(path, "import file")
    table = data.pop("import", None)
    if not isinstance(table, dict):
        raise MidtrainError(f"{path.name}: import: missing; add [[import.runs]] tables "
                            '(arm = "control", seed = 0, checkpoint = "..." or samples = [...])')  # fmt: skip
    cfg = parse_study(data, source=path.name, base_dir=path.parent.resolve())
    return (
        cfg,
        validate(ImportTable, table, source=path.name, prefix="import"),
        path.parent.resolve(),
    )


def _unsupported(cfg: StudyConfig) -> None:
    set_fields = {"sft_probe": cfg.sft_probe is not None, "merge_seeds": bool(cfg.merge_seeds),
                  "starts": bool(cfg.starts), "reuse": bool(cfg.reuse)}  # fmt: skip
    for name, why in UNSUPPORTED.items():
        if set_fields[name]:
            raise MidtrainError(f"{name}: not available for imported runs: {why}")
    if cfg.seeds == "auto":
        raise MidtrainError('seeds: "auto" adds seeds by training them; list the imported '
                            "seeds, e.g. seeds = [0, 1]")  # fmt: skip
    if cfg.eval.point_fractions != [1.0]:
        raise MidtrainError("eval.points: imported runs are evaluated at their end only; "
                            "remove eval.points")  # fmt: skip


def _resolve(src: Source, where: str, base: Path, cfg: StudyConfig) -> Resolved:
    if src.checkpoint is not None:
        from midtrain.train.checkpoint import check_hf_folder

        p = _path(src.checkpoint, base)
        if not p.exists():
            raise MidtrainError(f"{where}.checkpoint: {p} does not exist; give an HF "
                                "checkpoint folder (relative to the import file)")  # fmt: skip
        return Resolved(checkpoint=check_hf_folder(p, f"{where}.checkpoint").resolve())
    return Resolved(samples=_sample_files(src.samples or [], f"{where}.samples", base, cfg))


def _path(p: str, base: Path) -> Path:
    q = Path(p).expanduser()
    return q if q.is_absolute() else base / q


def _sample_files(patterns: list[str], where: str, base: Path, cfg: StudyConfig
                  ) -> dict[str, Path]:  # fmt: skip
    """Each pattern's files, one per task of the study: the task is in lm-eval's file name."""
    from midtrain.eval.samples import logged_task

    files: dict[str, Path] = {}
    tasks = list(cfg.eval.tasks)
    for i, pat in enumerate(patterns):
        full = str(_path(pat, base))
        found = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
        if not found or not Path(found[0]).is_file():
            raise MidtrainError(f"{where}[{i}]: {full} {'matches no file' if glob.has_magic(full) else 'does not exist'}; "
                                "give lm-eval's samples_TASK_DATE.jsonl files (relative to the import file)")  # fmt: skip
        for f in map(Path, found):
            task = logged_task(f)
            if task is None:
                raise MidtrainError(f"{where}[{i}]: {f.name} is not an lm-eval samples file "
                                    "(samples_TASK_DATE.jsonl, written by --log_samples); name those")  # fmt: skip
            if task not in tasks:
                raise MidtrainError(f"{where}[{i}]: {f.name} holds task {task!r}, which the study does "
                                    f"not list in eval.tasks ({', '.join(tasks) or 'none'}); add it "
                                    "there or leave the file out")  # fmt: skip
            if task in files:
                raise MidtrainError(f"{where}[{i}]: two files of task {task!r} ({files[task].name}, "
                                    f"{f.name}); keep one per task")  # fmt: skip
            _check_samples(f, f"{where}[{i}]")
            _check_settings(f, task, cfg, f"{where}[{i}]")
            files[task] = f.resolve()
    missing = [t for t in tasks if t not in files]
    if missing:
        raise MidtrainError(f"{where}: no samples of task {missing[0]!r} (the study's eval.tasks: "
                            f"{', '.join(tasks)}); add its samples_{missing[0]}_DATE.jsonl")  # fmt: skip
    return files


def _check_samples(f: Path, where: str) -> None:
    import json

    with open(f, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except ValueError as e:
                raise MidtrainError(f"{where}: {f.name} line {n}: not JSON ({e}); give the file "
                                    "lm-eval wrote") from None  # fmt: skip
            if not isinstance(s, dict) or "doc_id" not in s:
                raise MidtrainError(f"{where}: {f.name} line {n}: not an lm-eval sample (no "
                                    "doc_id); give the file lm-eval wrote")  # fmt: skip


def _check_settings(f: Path, task: str, cfg: StudyConfig, where: str) -> None:
    """Few-shot and limit as lm-eval's `results_<date>.json` beside the file records them (when it
    is there) must be the study's `[eval]` for the task: the records of all runs must be alike."""
    from midtrain.eval.samples import logged_results

    res = logged_results(f)
    if not res.is_file():
        return
    try:
        data = read_json(res)
    except (OSError, ValueError):
        return
    ts = cfg.eval.task_settings.get(task)
    shots = ts.num_fewshot if ts and ts.num_fewshot is not None else cfg.eval.num_fewshot
    limit = ts.limit if ts and ts.limit is not None else cfg.eval.limit
    ran = (data.get("n-shot") or {}).get(task)
    if isinstance(ran, int) and ran != shots:
        raise MidtrainError(f"{where}: lm-eval ran {task} {ran}-shot ({res.name}), the study's "
                            f"[eval] says {shots}; set eval.num_fewshot (or eval.task_settings."
                            f"{task}.num_fewshot) = {ran}, or import samples made with {shots}")  # fmt: skip
    n = (data.get("n-samples") or {}).get(task) or {}
    eff, orig = n.get("effective"), n.get("original")
    if isinstance(eff, int) and isinstance(orig, int) and eff != min(orig, limit or orig):
        want = f"eval.limit = {eff}" if eff < orig else "no eval.limit"
        raise MidtrainError(f"{where}: lm-eval scored {eff} of {task}'s {orig} documents "
                            f"({res.name}), the study's [eval] asks for {min(orig, limit or orig)}; "
                            f"set {want} (or import samples made with the study's limit)")  # fmt: skip


def check_import(
    cfg: StudyConfig, table: ImportTable, base: Path
) -> dict[tuple[str, int], Resolved]:
    """Every (arm, seed) is the study's and once, every seed has its control, every source
    exists and holds the study's tasks. Returns the sources by (arm, seed)."""
    _unsupported(cfg)
    arms, seeds = arm_names(cfg), list(cfg.first_seeds)
    out: dict[tuple[str, int], Resolved] = {}
    for i, run in enumerate(table.runs):
        where = f"import.runs[{i}]"
        if run.arm not in arms:
            raise MidtrainError(f"{where}.arm: {run.arm!r} is not an arm of this study; use one of "
                                f"{', '.join(arms)}")  # fmt: skip
        if run.seed not in seeds:
            raise MidtrainError(f"{where}.seed: {run.seed} is not a seed of this study (seeds = "
                                f"{seeds}); add it to seeds or fix the seed")  # fmt: skip
        if (run.arm, run.seed) in out:
            raise MidtrainError(f"{where}: {run.arm} seed {run.seed} is imported twice; keep one")
        out[(run.arm, run.seed)] = _resolve(run, where, base, cfg)
    for s in seeds:
        if (CONTROL, s) not in out:
            raise MidtrainError(f"import.runs: no control run for seed {s}; every seed needs its "
                                f'control: add [[import.runs]] arm = "control", seed = {s} (or '
                                "drop the seed from seeds)")  # fmt: skip
    return out


def _start(cfg: StudyConfig, table: ImportTable, base: Path, all_ckpt: bool) -> Resolved | None:
    if table.start is not None:
        return _resolve(table.start, "import.start", base, cfg)
    if all_ckpt and (Path(cfg.checkpoint) / "config.json").is_file():
        return Resolved(checkpoint=Path(cfg.checkpoint))
    return None


def _domains(cfg: StudyConfig, sources: list[Resolved], notes: list[str]) -> list[str]:
    """The held-out domains scored: none when a source is samples (they carry none); with
    checkpoints, the stores of eval.domains (default: those of [stores] that exist here),
    tokenised like every imported checkpoint."""
    from midtrain.data.store import open_store
    from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash

    if any(s.samples is not None for s in sources):
        if cfg.eval.domains:
            raise MidtrainError("eval.domains: runs imported from lm-eval samples have no held-out "
                                "loss; remove eval.domains, or import checkpoints")  # fmt: skip
        for i, g in enumerate(cfg.guards):
            if g.domain:
                raise MidtrainError(f"guards[{i}].domain: runs imported from lm-eval samples have "
                                    "no held-out loss; remove the guard, or import checkpoints")  # fmt: skip
        if cfg.domain_names:
            notes.append("held-out domain loss (bits per byte) not measured: lm-eval samples "
                         "carry none")  # fmt: skip
        return []
    names = cfg.eval.domains
    if names is None:
        names = [d for d in sorted(cfg.stores) if (Path(cfg.stores[d]) / "manifest.json").is_file()]
        if gone := sorted(set(cfg.stores) - set(names)):
            notes.append(f"held-out loss of {', '.join(gone)} not measured: no token store here")
    stores = {d: open_store(cfg.stores[d], f"stores.{d}") for d in names}
    for s in sources:
        ref = tokenizer_hash(load_tokenizer(s.checkpoint))
        for d, st in stores.items():
            if st.tokenizer_hash != ref:
                raise MidtrainError(f"stores.{d}: tokenised with another tokenizer than "
                                    f"{s.checkpoint}; leave it out of eval.domains, or re-prepare "
                                    f"it with --tokenizer {s.checkpoint}")  # fmt: skip
    for i, g in enumerate(cfg.guards):
        if g.domain and g.domain not in stores:
            raise MidtrainError(f"guards[{i}].domain: {g.domain} has no token store here; prepare "
                                "it, or remove the guard")  # fmt: skip
    return names


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
    start = _start(cfg, table, base, all_ckpt)
    notes: list[str] = []
    domains = _domains(cfg, [*sources.values(), *([start] if start else [])], notes)
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
    from midtrain.report import write_report
    from midtrain.study.collect import collect
    from midtrain.study.prereg import analysis_plan
    from midtrain.study.runner import named_errors, study_lock

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
