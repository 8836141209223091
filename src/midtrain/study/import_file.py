"""The import file of `midtrain study import`: its `[import]` table, read and checked.

Every source (an HF checkpoint folder, or lm-eval `--log_samples` files per task) is resolved and
checked against the study before anything is planned (driver/importer.py plans and runs it).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from pydantic import model_validator

from midtrain.errors import MidtrainError
from midtrain.io import read_json
from midtrain.schema import Strict, field, load_toml, validate
from midtrain.study.config import CONTROL, StudyConfig, parse_study
from midtrain.study.plan import arm_names

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


def start_source(
    cfg: StudyConfig, table: ImportTable, base: Path, all_ckpt: bool
) -> Resolved | None:
    if table.start is not None:
        return _resolve(table.start, "import.start", base, cfg)
    if all_ckpt and (Path(cfg.checkpoint) / "config.json").is_file():
        return Resolved(checkpoint=Path(cfg.checkpoint))
    return None


def import_domains(cfg: StudyConfig, sources: list[Resolved], notes: list[str]) -> list[str]:
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
