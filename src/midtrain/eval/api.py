"""Evaluation of a checkpoint: per-domain bits-per-byte and downstream tasks through lm-eval.

Both are kept per example so that a study can pair an arm with its control example by example.
For multiple-choice tasks each example also gets `gold_logprob_per_byte` (log-probability of the
gold continuation / its UTF-8 bytes) and `margin` (that per-byte value minus the best wrong
choice's): continuous metrics that carry signal where a small model's accuracy sits at chance.
Every example gets `score`, its task's headline metric (accuracy; exact match for a generative
task, pass@1 for a code task): records are made from lm-eval's samples in `samples.py`.

Results are cached: `OUT/eval.json` carries a key hashing the checkpoint's files, what the tasks
read (the task folder, each task's YAMLs, `!function` modules and data files wherever they are:
`tasks_key`), the stores' content hashes and the settings; the same evaluation again returns it
without loading the model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from midtrain import env
from midtrain.data.store import TokenStore, open_store
from midtrain.errors import MidtrainError
from midtrain.eval.results import (
    FORMAT,
    DomainExample,
    EvalResult,
    SettingsRecord,
    TaskExample,
    TaskSettingRecord,
    sort_key,
    summarise,
    to_json_line,
)
from midtrain.io import atomic_write_json, atomic_write_text, hash_obj, hash_tree, read_json
from midtrain.schema import Strict, field, validate


class TaskSetting(Strict):
    """Per-task overrides of the eval defaults."""

    limit: int | None = field(None, gt=0, description="Examples of this task.", unit="examples")
    num_fewshot: int | None = field(None, ge=0, description="Few-shot examples of this task.")
    batch_size: int | None = field(None, gt=0, description="lm-eval batch size of this task.")


class EvalSettings(Strict):
    """How to evaluate: lm-eval tasks and their settings (the study file's [eval] adds domains)."""

    tasks: list[str] = field([], description="lm-eval task names (a folder's via include_path).")
    include_path: str | None = field(None, description="A folder of extra lm-eval task YAMLs.")
    limit: int | None = field(
        None, gt=0, description="Examples per task (default: all).", unit="examples"
    )
    num_fewshot: int = field(0, ge=0, description="Few-shot examples per prompt.")
    batch_size: int = field(32, gt=0, description="Batch size of tasks and domains.")
    task_settings: dict[str, TaskSetting] = field(
        {}, description="[eval.task_settings.TASK]: per-task limit / num_fewshot / batch_size."
    )
    allow_code_execution: bool = field(
        False,
        description="Run tasks that execute the code the model writes (lm-eval's unsafe_code "
        "tasks: HumanEval, MBPP; pass@k). Without it such a task is refused; use a sandbox.",
    )

    def hashed(self, seed: int = 0) -> SettingsRecord:
        """The settings that change an evaluation's records (part of its cache key);
        `allow_code_execution` is a permission, not one of them."""
        per_task: dict[str, TaskSettingRecord] = {
            t: ts.model_dump(exclude_none=True) for t, ts in self.task_settings.items()
        }
        return {"limit": self.limit, "num_fewshot": self.num_fewshot, "seed": seed,
                "task_settings": per_task}  # fmt: skip


def tasks_key(tasks: list[str], include_path: str | Path | None) -> str:
    """A hash of everything the tasks read: the include folder's files and, per task, its YAMLs,
    `!function` modules and data files (also outside the folder; lmeval.task_inputs).

    A data file that does not exist is a one-line error naming the task and the resolved path.
    """
    from midtrain.eval import lmeval, task_files

    include_path = Path(include_path) if include_path else None
    return hash_obj({
        "task_files": task_files.folder_hash(include_path) if include_path else None,
        "inputs": lmeval.task_inputs(tasks, include_path) if tasks else {},
    })  # fmt: skip


def cache_key(
    checkpoint: Path, tasks: list[str], tasks_hash: str, stores: dict[str, TokenStore],
    settings: SettingsRecord,
) -> str:  # fmt: skip
    return hash_obj({
        "format": FORMAT,
        "checkpoint": hash_tree(checkpoint, exclude=("midtrain_state",)),
        "tasks": sorted(tasks),
        "task_files": tasks_hash,
        "domains": {n: s.content_hash for n, s in sorted(stores.items())},
        "settings": settings,
    })  # fmt: skip


def _relocated(
    res: EvalResult, out: Path, checkpoint: Path, s: EvalSettings, stores: dict[str, TokenStore]
) -> EvalResult:
    """A cached result whose inputs moved (a copied or renamed study folder): the key proves the
    content is the same, so record the current paths, which `EvalStage.cached` compares."""
    paths = {
        "checkpoint": str(checkpoint), "include_path": s.include_path,
        "domains": {n: str(st.path) for n, st in stores.items()},
    }  # fmt: skip
    if all(getattr(res, k) == v for k, v in paths.items()):
        return res
    res = res.model_copy(update=paths)
    atomic_write_json(out / "eval.json", res)
    return res


def evaluate(
    checkpoint: str | Path,
    *,
    tasks: list[str] | None = None,
    include_path: str | Path | None = None,
    domains: dict[str, str | Path] | None = None,
    out: str | Path,
    limit: int | None = None,
    num_fewshot: int = 0,
    batch_size: int = 32,
    task_settings: dict[str, TaskSettingRecord] | None = None,
    device: str = "auto",
    seed: int = 0,
    allow_code_execution: bool = False,
) -> EvalResult:
    """Evaluate `checkpoint`; write OUT/eval.json + OUT/examples.jsonl; reuse a cached result.

    `domains` maps a label to a token store folder; records and tables use the label.
    `allow_code_execution` lets lm-eval run the code a code task's model writes (its
    `unsafe_code` tasks); without it such a task is a one-line error before any model loads.
    """
    from midtrain.eval import lmeval
    from midtrain.train.checkpoint import check_hf_folder

    env.setup()
    s = validate(EvalSettings, {
        "tasks": list(tasks or []), "include_path": str(include_path) if include_path else None,
        "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
        "task_settings": task_settings or {}, "allow_code_execution": allow_code_execution,
    })  # fmt: skip
    dev = env.resolve_device(device, "--device")
    checkpoint, out = Path(checkpoint), Path(out)
    check_hf_folder(checkpoint, "checkpoint")
    if out.exists() and not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass a folder")
    inc = Path(s.include_path) if s.include_path else None
    stores = {n: open_store(p, f"domains.{n}") for n, p in (domains or {}).items()}
    _check_tokenizer(checkpoint, stores)
    settings = s.hashed(seed)
    tkey = tasks_key(s.tasks, inc)
    key = cache_key(checkpoint, s.tasks, tkey, stores, settings)
    if (out / "examples.jsonl").is_file() and (out / "eval.json").is_file():
        if read_json(out / "eval.json").get("key") == key:
            cached = EvalResult.load(out)
            if not cached.lacks_scores():
                return _relocated(cached, out, checkpoint, s, stores)
    lmeval.validate_tasks(s.tasks, inc, allow_code=s.allow_code_execution)
    t0 = time.time()
    model, tok = _load(checkpoint, dev)
    records: list[TaskExample | DomainExample] = []
    timing: dict[str, float] = {}
    for name, store in sorted(stores.items()):
        t = time.time()
        records += _domains(model, store, name, s.batch_size)
        timing[f"domain:{name}"] = round(time.time() - t, 3)
    if s.tasks:
        t = time.time()
        records += _tasks(model, tok, s, inc, seed)
        timing["tasks"] = round(time.time() - t, 3)
    records.sort(key=sort_key)
    result = EvalResult(
        key=key, checkpoint=str(checkpoint), tasks=s.tasks, include_path=s.include_path,
        domains={n: str(st.path) for n, st in stores.items()}, settings=settings,
        tasks_key=tkey, results=summarise(records), seconds=round(time.time() - t0, 3), timing=timing,
    )  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "examples.jsonl", "".join(to_json_line(r) for r in records))
    atomic_write_json(out / "eval.json", result)  # written last: its presence means complete
    return result


def _check_tokenizer(checkpoint: Path, stores: dict[str, TokenStore]) -> None:
    """A domain store must have been tokenised with the checkpoint's tokenizer."""
    if not stores:
        return
    from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash

    ref = tokenizer_hash(load_tokenizer(checkpoint))
    for name, store in stores.items():
        if store.tokenizer_hash != ref:
            raise MidtrainError(
                f"domains.{name}: {store.path} was tokenised with another tokenizer than "
                f"{checkpoint}; re-prepare it with --tokenizer {checkpoint}"
            )


def _load(checkpoint: Path, device: str) -> tuple[Any, Any]:
    """The model in eval mode and its tokenizer with pad/eos/bos set."""
    from midtrain.data.tokenizer import load_tokenizer
    from midtrain.train.checkpoint import load_model

    model = load_model(checkpoint, device, "checkpoint").eval()
    tok = load_tokenizer(checkpoint)
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
    return model, tok


def _domains(model: Any, store: TokenStore, name: str, batch_size: int) -> list[DomainExample]:
    from midtrain.eval.domains import domain_records

    return domain_records(model, store, name=name, batch_size=batch_size)


def _tasks(model: Any, tok: Any, s: EvalSettings, inc: Path | None, seed: int) -> list[TaskExample]:
    """Group tasks by their (limit, num_fewshot, batch_size) and run lm-eval once per group."""
    from midtrain.eval import lmeval
    from midtrain.eval.domains import context_length
    from midtrain.eval.samples import task_records

    groups: dict[tuple[int | None, int, int], list[str]] = {}
    for t in s.tasks:
        ts = s.task_settings.get(t, TaskSetting())
        k = (
            ts.limit if ts.limit is not None else s.limit,
            ts.num_fewshot if ts.num_fewshot is not None else s.num_fewshot,
            ts.batch_size if ts.batch_size is not None else s.batch_size,
        )
        groups.setdefault(k, []).append(t)
    records: list[TaskExample] = []
    for (lim, shots, bs), names in groups.items():
        samples = lmeval.run_tasks(
            model, tok, names, inc, limit=lim, num_fewshot=shots, batch_size=bs,
            max_length=context_length(model), seed=seed, allow_code=s.allow_code_execution,
        )  # fmt: skip
        records += [r for task, xs in samples.items() for r in task_records(task, xs)]
    return records
