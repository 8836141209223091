"""`midtrain bench eval`: our task evaluation ÷ lm-eval's own HF backend, like for like.

One process, one checkpoint on disk (the demo-size Llama with random weights and a tokenizer
trained on the demo world), the demo world's multiple-choice tasks through `include_path`, the
same `limit` and batch size on both sides:

- ours: `midtrain.eval.evaluate(checkpoint, tasks=..., out=NEW_FOLDER)`: the whole call (cache
  key, model load, lm-eval with our patches, records, files written), into a new folder each
  round so nothing is reused;
- lm-eval: `simple_evaluate(model=HFLM(pretrained=checkpoint, batch_size=B, device="cpu"), ...)`
  with its defaults, inside `lmeval.unpatched()` (lm-eval as installed). Its TaskManager is built
  once beforehand, as ours is cached per process: neither side pays for indexing lm-eval's tasks.

A warm-up round of each side first, then `rounds` rounds (ours, then lm-eval); examples/s is the
examples scored (one per document) over the call's wall time, and the JSON reports medians.
Both sides must score the same documents of every task, or the benchmark fails.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

from midtrain.errors import MidtrainError
from midtrain.io import library_versions

TASKS = ["world_arith", "world_code", "world_facts"]  # the world's multiple-choice tasks
TARGET = 1.0


class EvalSpeedConfig(TypedDict):
    tasks: list[str]
    limit: int
    batch_size: int
    rounds: int
    warmup_rounds: int
    world_scale: float
    threads: int
    threads_requested: int
    device: str
    model: str


class EvalSpeedReport(TypedDict):
    """The `bench eval --json` report (`run_bench`)."""

    benchmark: str
    ratio: float
    meets_target: bool
    target: float
    examples_per_s: dict[str, float]
    examples: dict[str, dict[str, int]]
    examples_total: int
    rounds: dict[str, list[float]]
    config: EvalSpeedConfig
    versions: dict[str, str]


def build_inputs(root: Path, scale: float = 0.3, vocab: int = 1024, seed: int = 0) -> Path:
    """The demo world under `root` and a checkpoint ROOT/ckpt: the demo model (random weights,
    seed `seed`) and a BPE of `vocab` ids trained on the world's web source."""
    import itertools

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from midtrain.data import readers
    from midtrain.data.tokenizer import train_tokenizer
    from midtrain.demo.pipeline import DemoSettings
    from midtrain.demo.world import generate_world

    world = generate_world(root / "world", seed=seed, scale=scale)
    web = readers.resolve_inputs([world["source_paths"]["web"]])
    tok = train_tokenizer(itertools.islice(readers.iter_texts(web, "text"), 5000), vocab,
                          root / "tokenizer")  # fmt: skip
    spec = dict(DemoSettings().model)
    cfg = AutoConfig.for_model(spec.pop("model_type"), vocab_size=vocab, **spec)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(root / "ckpt")
    tok.save_pretrained(root / "ckpt")
    return root / "ckpt"


def _ours(ckpt: Path, tasks_dir: Path, out: Path, tasks: list[str], limit: int, batch: int
          ) -> tuple[float, dict[str, int]]:  # fmt: skip
    from midtrain.eval import evaluate

    t0 = time.perf_counter()
    res = evaluate(ckpt, tasks=tasks, include_path=tasks_dir, out=out, limit=limit,
                   batch_size=batch, device="cpu")  # fmt: skip
    seconds = time.perf_counter() - t0
    return seconds, {t: res.results.tasks[t].score.n for t in tasks}


def _theirs(ckpt: Path, tm: Any, tasks: list[str], limit: int, batch: int
            ) -> tuple[float, dict[str, int]]:  # fmt: skip
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from midtrain.eval import lmeval

    with lmeval.unpatched(), lmeval.quiet(), _no_fd2():
        t0 = time.perf_counter()
        lm = HFLM(pretrained=str(ckpt), batch_size=batch, device="cpu")
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=tm, limit=limit)
        seconds = time.perf_counter() - t0
    return seconds, {t: len({s["doc_id"] for s in res["samples"][t]}) for t in tasks}


@contextlib.contextmanager
def _no_fd2() -> Iterator[None]:
    """File descriptor 2 to /dev/null: lm-eval's own `get_git_commit_hash` runs git, which prints
    "fatal: not a git repository" outside a checkout (the time it takes still counts)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _reference_task_manager(tasks_dir: Path) -> Any:
    from lm_eval.tasks import TaskManager

    from midtrain.eval import lmeval

    lmeval.task_manager(tasks_dir)  # ours first: applies the patches that `unpatched` undoes
    with lmeval.unpatched(), lmeval.quiet():
        return TaskManager(include_path=str(tasks_dir))


def run_bench(
    limit: int = 100, batch: int = 32, rounds: int = 3, scale: float = 0.3, threads: int = 0,
    tasks: list[str] | None = None, workdir: str | Path | None = None,
) -> EvalSpeedReport:  # fmt: skip
    """Build the inputs, warm both sides up, then `rounds` rounds of ours and lm-eval's."""
    from midtrain import env

    env.setup(threads)
    env.quiet_transformers()
    tasks = list(tasks or TASKS)
    rows: dict[str, list[float]] = {"ours": [], "lm_eval": []}
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-eval-", dir=workdir) as tmp:
        root = Path(tmp)
        ckpt = build_inputs(root, scale=scale)
        tasks_dir = root / "world" / "tasks"
        tm = _reference_task_manager(tasks_dir)
        for r in range(rounds + 1):  # round 0 is the warm-up
            s_ours, n_ours = _ours(ckpt, tasks_dir, root / f"eval{r}", tasks, limit, batch)
            s_ref, n_ref = _theirs(ckpt, tm, tasks, limit, batch)
            if n_ours != n_ref:
                raise MidtrainError(
                    f"bench eval: the two sides scored different examples (ours {n_ours}, "
                    f"lm-eval {n_ref}); report this as a bug"
                )
            if r:
                rows["ours"].append(sum(n_ours.values()) / s_ours)
                rows["lm_eval"].append(sum(n_ref.values()) / s_ref)
    ours, ref = statistics.median(rows["ours"]), statistics.median(rows["lm_eval"])
    examples = {"ours": n_ours, "lm_eval": n_ref}
    return _result(ours, ref, rows, examples, limit, batch, rounds, scale, threads)


def _result(ours: float, ref: float, rows: dict[str, list[float]],
            examples: dict[str, dict[str, int]], limit: int, batch: int, rounds: int,
            scale: float, threads: int) -> EvalSpeedReport:  # fmt: skip
    import torch

    ratio = ours / ref
    return {
        "benchmark": "eval",
        "ratio": round(ratio, 3),
        "meets_target": ratio >= TARGET,
        "target": TARGET,
        "examples_per_s": {"ours": round(ours, 2), "lm_eval": round(ref, 2)},
        "examples": examples,  # per side and task, the last round's
        "examples_total": sum(examples["ours"].values()),
        "rounds": {k: [round(v, 2) for v in vs] for k, vs in rows.items()},
        "config": {"tasks": sorted(examples["ours"]), "limit": limit, "batch_size": batch,
                   "rounds": rounds, "warmup_rounds": 1, "world_scale": scale,
                   "threads": torch.get_num_threads(), "threads_requested": threads,
                   "device": "cpu", "model": "demo Llama (d=128, 4 layers, vocab 1024), random"},
        "versions": library_versions(),
    }  # fmt: skip
