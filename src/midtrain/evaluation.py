"""Evaluation of a checkpoint: per-domain bits-per-byte and downstream tasks through lm-eval.

Both are kept per example so that a study can pair an arm with its control example by example:

- Domains (Paloma-style): every held-out document of a token store is scored with the EOS token
  as its only context, so every token of the document is predicted once. Documents longer than the
  model's context are cut into windows that overlap by one token (each window restarts its context).
  bpb = summed NLL (nats) / (ln 2 x UTF-8 bytes of the original text).
- Tasks: lm-evaluation-harness in process (`HFLM` around the loaded model, `simple_evaluate` with
  `log_samples=True`). For multiple-choice tasks each example also gets `gold_logprob_per_byte`
  (log-probability of the gold continuation / its UTF-8 bytes) and `margin` (that per-byte value
  minus the best wrong choice's per-byte value): continuous metrics that carry signal where a small
  model's accuracy sits at chance.

Results are cached: `OUT/eval.json` carries a key hashing the checkpoint's files, the tasks' files,
the stores' content hashes and the settings; the same evaluation again returns it without loading
the model.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_json, atomic_write_text, hash_obj, hash_tree, read_json

LN2 = math.log(2.0)
FORMAT = "midtrain-eval/1"


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ----------------------------------------------------------------------------- tasks: validation
def _task_manager(include_path: Path | None):
    """One TaskManager per include path and process: building one indexes every task (~5 s)."""
    return _cached_task_manager(str(Path(include_path).resolve()) if include_path else None)


@functools.lru_cache(maxsize=8)
def _cached_task_manager(include_path: str | None):
    _offline()
    import lm_eval.evaluator
    from lm_eval.tasks import TaskManager

    # simple_evaluate collects torch's environment report through subprocesses on every call
    # (~0.5 s, and `git` noise on stderr); run directories record library versions already.
    if hasattr(lm_eval.evaluator, "add_env_info"):
        lm_eval.evaluator.add_env_info = lambda *a, **k: None
    _memoize_lm_eval_templates()
    with _quiet():
        return TaskManager(include_path=include_path)


def _memoize_lm_eval_templates() -> None:
    """lm-eval compiles a task's Jinja template from its string for every document and field
    (`utils.apply_template` -> `env.from_string`): ~1.5 s of a 5 s demo eval. A template string
    always compiles to the same template, so compile each string once per process."""
    import lm_eval.utils

    env = getattr(lm_eval.utils, "env", None)
    if env is None or getattr(env, "_midtrain_memoized", False):
        return
    compile_uncached = env.from_string
    cached = functools.lru_cache(maxsize=4096)(compile_uncached)

    def from_string(source, *args, **kwargs):
        if args or kwargs or not isinstance(source, str):
            return compile_uncached(source, *args, **kwargs)
        return cached(source)

    env.from_string = from_string
    env._midtrain_memoized = True


@contextlib.contextmanager
def _quiet():
    """lm-eval and datasets log a lot at INFO/WARNING; keep the terminal for our own lines.

    lm-eval's tqdm bars stay on a terminal (they redraw in place); when stderr is a file or a
    pipe (CI, `> log`) every redraw would be a new line, so they are dropped there. Errors still
    surface as exceptions, and logging handlers keep the real stderr."""
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    bars = (
        contextlib.nullcontext()
        if sys.stderr.isatty()
        else contextlib.redirect_stderr(io.StringIO())
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()), bars:
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


_VALIDATED: set[tuple[tuple[str, ...], str | None]] = set()


def validate_tasks(tasks: list[str], include_path: Path | None) -> None:
    """Every task must be known to lm-eval and its data loadable offline; checked before any model."""
    key = (tuple(sorted(tasks)), str(include_path) if include_path else None)
    if not tasks or key in _VALIDATED:
        return
    if include_path is not None and not Path(include_path).is_dir():
        raise MidtrainError(f"--include-path {include_path} is not a folder of task YAMLs")
    tm = _task_manager(include_path)
    known = set(tm.all_tasks)
    for task in tasks:
        if task not in known:
            hint = (
                "" if include_path else " (a task folder needs --include-path / eval.include_path)"
            )
            raise MidtrainError(f"task {task!r} is not known to lm-eval; check the name{hint}")
    from lm_eval.tasks import get_task_dict

    for task in tasks:
        try:
            with _quiet():
                get_task_dict([task], tm)
        except Exception as e:  # noqa: BLE001 - any failure here means the data is not there
            reason = " ".join(str(e).split())[:160]
            raise MidtrainError(
                f"task {task!r}: its data could not be loaded offline ({type(e).__name__}: {reason}); "
                "make the dataset available locally"
            ) from None
    _VALIDATED.add(key)


# ----------------------------------------------------------------------------- model loading
def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_model(checkpoint: Path, device: str = "auto"):
    """The checkpoint's model (eval mode) and its tokenizer with pad/eos/bos set."""
    _offline()
    from transformers import AutoModelForCausalLM

    from midtrain.data.tokenizer import load_tokenizer

    if not (Path(checkpoint) / "config.json").is_file():
        raise MidtrainError(f"checkpoint {checkpoint} is not a HF model folder (no config.json)")
    model = AutoModelForCausalLM.from_pretrained(checkpoint).to(_device(device)).eval()
    tok = load_tokenizer(checkpoint)
    if tok.bos_token is None:
        tok.bos_token = tok.eos_token
    return model, tok


def _context_length(model) -> int:
    n = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    return int(n or 1024)


# ----------------------------------------------------------------------------- domains
def domain_records(
    model, store, *, batch_size: int = 32, max_len: int | None = None
) -> list[dict[str, Any]]:
    """Per held-out document: nll (nats), tokens, bytes, bpb. Windows of <= max_len tokens."""
    import torch

    docs, nbytes = store.heldout_docs(), store.heldout_bytes()
    max_len = max_len or _context_length(model)
    windows: list[tuple[int, np.ndarray]] = []  # (doc index, ids incl. one context token)
    for i, doc in enumerate(docs):
        seq = np.concatenate([[store.eos_id], np.asarray(doc, dtype=np.int64)])
        for start in range(0, len(seq) - 1, max_len - 1):
            windows.append((i, seq[start : start + max_len]))
    nll = np.zeros(len(docs), dtype=np.float64)
    order = sorted(range(len(windows)), key=lambda k: len(windows[k][1]))
    device = next(model.parameters()).device
    with torch.inference_mode():
        for b in range(0, len(order), batch_size):
            chunk = [windows[k] for k in order[b : b + batch_size]]
            width = max(len(w) for _, w in chunk)
            ids = torch.zeros((len(chunk), width), dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, w) in enumerate(chunk):
                ids[r, : len(w)] = torch.from_numpy(w)
                mask[r, : len(w)] = 1
            ids, mask = ids.to(device), mask.to(device)
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
            logp = torch.log_softmax(logits[:, :-1], dim=-1)
            tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1) * mask[:, 1:]
            sums = (-tok_lp.sum(dim=1)).double().cpu().numpy()
            for r, (doc_i, _) in enumerate(chunk):
                nll[doc_i] += sums[r]
    return [
        {"kind": "domain", "domain": store.name, "doc_id": i, "nll": float(nll[i]),
         "tokens": int(len(docs[i])), "bytes": int(nbytes[i]),
         "bpb": float(nll[i] / (LN2 * nbytes[i])) if nbytes[i] else float("nan")}
        for i in range(len(docs))
    ]  # fmt: skip


# ----------------------------------------------------------------------------- tasks
def task_records(
    lm, tm, tasks: list[str], *, limit, num_fewshot, seed: int
) -> list[dict[str, Any]]:
    """Run lm-eval on `tasks` and turn its logged samples into per-example records."""
    import lm_eval

    with _quiet():
        res = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
            log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR",
        )  # fmt: skip
    out = []
    for task, samples in res["samples"].items():
        for s in samples:
            out.append(_example(task, s))
    return out


def _example(task: str, s: dict[str, Any]) -> dict[str, Any]:
    rec: dict[str, Any] = {"kind": "task", "task": task, "doc_id": s["doc_id"]}
    for m in ("acc", "acc_norm"):
        rec[m] = float(s[m]) if m in s and s[m] is not None else None
    rec["gold_logprob_per_byte"] = rec["margin"] = None
    resps, args, gold = s.get("filtered_resps"), s.get("arguments"), s.get("target")
    if resps and args and isinstance(gold, int) and len(resps) == len(args) > 1:
        lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]
        per_byte = [ll / max(1, len(a[1].encode("utf-8"))) for ll, a in zip(lls, args, strict=True)]
        wrong = [v for i, v in enumerate(per_byte) if i != gold]
        rec["gold_logprob_per_byte"] = per_byte[gold]
        rec["margin"] = per_byte[gold] - max(wrong)
    for k, v in s.items():  # other output types: keep lm-eval's own per-sample metrics
        if k not in rec and isinstance(v, (int, float)) and k not in ("doc_id",):
            rec[k] = float(v)
    return rec


# ----------------------------------------------------------------------------- aggregates
def _mean_se(vals: list[float]) -> dict[str, float | None]:
    x = np.array([v for v in vals if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return {"mean": None, "stderr": None, "n": 0}
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return {"mean": float(x.mean()), "stderr": se, "n": int(len(x))}


def aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    tasks: dict[str, dict[str, Any]] = {}
    domains: dict[str, dict[str, Any]] = {}
    for name in sorted({r["task"] for r in records if r["kind"] == "task"}):
        rs = [r for r in records if r["kind"] == "task" and r["task"] == name]
        tasks[name] = {m: _mean_se([r.get(m) for r in rs])
                       for m in ("acc", "acc_norm", "gold_logprob_per_byte", "margin")}  # fmt: skip
    for name in sorted({r["domain"] for r in records if r["kind"] == "domain"}):
        rs = [r for r in records if r["kind"] == "domain" and r["domain"] == name]
        nll, tok, byt = (sum(r[k] for r in rs) for k in ("nll", "tokens", "bytes"))
        domains[name] = {
            "bpb": _mean_se([r["bpb"] for r in rs]),
            "bpb_pooled": nll / (LN2 * byt) if byt else None,
            "loss_per_token": nll / tok if tok else None,
            "docs": len(rs), "tokens": tok, "bytes": byt,
        }  # fmt: skip
    return {"tasks": tasks, "domains": domains}


# ----------------------------------------------------------------------------- entry point
def cache_key(
    checkpoint: Path, tasks, include_path, domains: dict[str, Any], settings: dict
) -> str:
    from midtrain.data.store import TokenStore

    return hash_obj({
        "format": FORMAT,
        "checkpoint": hash_tree(checkpoint, exclude=("midtrain_state",)),
        "tasks": sorted(tasks),
        "task_files": hash_tree(include_path) if include_path else None,
        "domains": {n: TokenStore.open(p).content_hash for n, p in sorted(domains.items())},
        "settings": settings,
    })  # fmt: skip


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
) -> dict[str, Any]:
    """Evaluate `checkpoint`; write OUT/eval.json + OUT/examples.jsonl; reuse a cached result."""
    from midtrain.data.store import TokenStore

    checkpoint, out = Path(checkpoint), Path(out)
    tasks, domains = list(tasks or []), {k: Path(v) for k, v in (domains or {}).items()}
    include_path = Path(include_path) if include_path else None
    task_settings = task_settings or {}
    settings = {
        "limit": limit,
        "num_fewshot": num_fewshot,
        "task_settings": task_settings,
        "seed": seed,
    }
    key = cache_key(checkpoint, tasks, include_path, domains, settings)
    cached = out / "eval.json"
    if (
        cached.is_file()
        and (out / "examples.jsonl").is_file()
        and read_json(cached).get("key") == key
    ):
        return read_json(cached)
    validate_tasks(tasks, include_path)
    stores = {n: TokenStore.open(p) for n, p in domains.items()}
    t0 = time.time()
    model, tok = load_model(checkpoint, device)
    records: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    for name, store in sorted(stores.items()):
        t = time.time()
        records += domain_records(model, store, batch_size=batch_size)
        timing[f"domain:{name}"] = round(time.time() - t, 3)
    if tasks:
        t = time.time()
        records += _run_tasks(model, tok, tasks, include_path, limit, num_fewshot, batch_size,
                              task_settings, seed)  # fmt: skip
        timing["tasks"] = round(time.time() - t, 3)
    records.sort(
        key=lambda r: (
            r["kind"],
            r.get("task") or r.get("domain"),
            str(type(r["doc_id"])),
            r["doc_id"],
        )
    )
    result = {
        "format": FORMAT, "key": key, "checkpoint": str(checkpoint), "tasks": tasks,
        "include_path": str(include_path) if include_path else None,
        "domains": {n: str(p) for n, p in domains.items()}, "settings": settings,
        "results": aggregate(records), "seconds": round(time.time() - t0, 3), "timing": timing,
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "examples.jsonl", "".join(to_json_line(r) for r in records))
    atomic_write_json(cached, result)  # written last: its presence means the eval is complete
    return result


def to_json_line(rec: dict[str, Any]) -> str:
    return json.dumps(rec, sort_keys=True, allow_nan=True) + "\n"


def _run_tasks(
    model, tok, tasks, include_path, limit, num_fewshot, batch_size, task_settings, seed
):
    """Group tasks by their (limit, num_fewshot, batch_size) and run lm-eval once per group."""
    from lm_eval.models.huggingface import HFLM

    tm = _task_manager(include_path)
    groups: dict[tuple, list[str]] = {}
    for t in tasks:
        s = task_settings.get(t, {})
        k = (
            s.get("limit", limit),
            s.get("num_fewshot", num_fewshot),
            s.get("batch_size", batch_size),
        )
        groups.setdefault(k, []).append(t)
    records = []
    for (lim, shots, bs), names in groups.items():
        with _quiet():
            lm = HFLM(
                pretrained=model, tokenizer=tok, batch_size=bs, max_length=_context_length(model)
            )
        records += task_records(lm, tm, names, limit=lim, num_fewshot=shots, seed=seed)
    return records
