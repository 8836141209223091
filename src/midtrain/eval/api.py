"""Evaluation of a checkpoint: per-domain bits-per-byte and downstream tasks through lm-eval.

Both are kept per example so that a study can pair an arm with its control example by example.
For multiple-choice tasks each example also gets `gold_logprob_per_byte` (log-probability of the
gold continuation / its UTF-8 bytes) and `margin` (that per-byte value minus the best wrong
choice's): continuous metrics that carry signal where a small model's accuracy sits at chance.

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
    TaskExample,
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

    def hashed(self, seed: int = 0) -> dict[str, Any]:
        """The settings that change an evaluation's records (part of its cache key)."""
        per_task = {t: ts.model_dump(exclude_none=True) for t, ts in self.task_settings.items()}
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
    settings: dict[str, Any],
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
    task_settings: dict[str, dict[str, Any]] | None = None,
    device: str = "auto",
    seed: int = 0,
) -> EvalResult:
    """Evaluate `checkpoint`; write OUT/eval.json + OUT/examples.jsonl; reuse a cached result.

    `domains` maps a label to a token store folder; records and tables use the label.
    """
    from midtrain.eval import lmeval
    from midtrain.train.checkpoint import check_hf_folder

    env.setup()
    s = validate(EvalSettings, {
        "tasks": list(tasks or []), "include_path": str(include_path) if include_path else None,
        "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size,
        "task_settings": task_settings or {},
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
            return _relocated(EvalResult.load(out), out, checkpoint, s, stores)
    lmeval.validate_tasks(s.tasks, inc)
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
            max_length=context_length(model), seed=seed,
        )  # fmt: skip
        records += [task_example(task, x) for task, xs in samples.items() for x in xs]
    return records


def task_example(task: str, s: dict[str, Any]) -> TaskExample:
    """One lm-eval logged sample as a record: acc, acc_norm, and for multiple choice the gold
    answer's log-probability per byte and its margin over the best wrong choice."""
    rec: dict[str, Any] = {"task": task, "doc_id": s["doc_id"]}
    for m in ("acc", "acc_norm"):
        rec[m] = float(s[m]) if m in s and s[m] is not None else None
    resps, args, gold = s.get("filtered_resps"), s.get("arguments"), s.get("target")
    if resps and args and isinstance(gold, int) and len(resps) == len(args) > 1:
        lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]
        per_byte = [ll / max(1, len(a[1].encode("utf-8"))) for ll, a in zip(lls, args, strict=True)]
        wrong = [v for i, v in enumerate(per_byte) if i != gold]
        rec["gold_logprob_per_byte"] = per_byte[gold]
        rec["margin"] = per_byte[gold] - max(wrong)
        rec["choices"] = len(args)
    for k, v in s.items():  # other output types: keep lm-eval's own per-sample metrics
        skip = ("doc_id", "gold_logprob_per_byte", "margin", "kind", "task", "choices")
        if k not in rec and k not in skip and isinstance(v, (int, float)):
            rec[k] = float(v)
    return TaskExample.model_validate(rec)
