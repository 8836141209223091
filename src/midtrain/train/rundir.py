"""The run directory: self-describing, content-checked, resumable.

```
OUT/config.json    the resolved config (every field, absolute paths, derived steps and LRs)
OUT/inputs.json    hashes of the start checkpoint, tokenizer and stores; library versions
OUT/log.jsonl      one line per optimizer step: step, tokens, lr, loss, grad_norm, tok_s
OUT/state/         the latest resumable state (HF folder + optimizer, RNG, position); removed when done
OUT/final/         the final HF checkpoint + midtrain_state/ (a next run can start from it)
OUT/metrics.json   RunResult;  OUT/status.json  RunStatus: running | failed | interrupted | done
```
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar

from pydantic import BaseModel

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_json, hash_obj, hash_tree, library_versions, read_json
from midtrain.train.checkpoint import TrainerState
from midtrain.train.config import identity
from midtrain.train.log import LogLine
from midtrain.train.plan import RunPlan

RESULT_FORMAT = "midtrain-run/1"

R = TypeVar("R", bound=BaseModel)


class RunStatus(BaseModel):
    """OUT/status.json."""

    status: Literal["running", "failed", "interrupted", "done"]
    step: int | None = None
    from_step: int | None = None
    pid: int | None = None
    time: float | None = None
    reason: str | None = None
    # the last finite log line (LogLine) before a divergence; int | float keeps its ints ints
    last_good: dict[str, int | float | None] | None = None


class RunResult(BaseModel):
    """OUT/metrics.json: what a finished run reports (the `train` stage's result)."""

    format: str = RESULT_FORMAT
    status: Literal["done"] = "done"
    steps: int
    tokens: int
    final_loss: float | None  # None: an external trainer (train/external.py) logged no loss
    mean_loss_last_10pct: float | None
    first_loss: float | None
    start_lr: float
    final_lr: float
    wall_s: float
    tokens_per_s: float | None
    flops: float
    final_checkpoint: str
    warnings: list[str] = []


class InputHash(TypedDict):
    path: str
    hash: str  # io.hash_tree of a checkpoint, data.tokenizer.tokenizer_hash of a tokenizer


class StoreInput(TypedDict):
    path: str
    content_hash: str  # the store's manifest.json content_hash


class RunInputs(TypedDict):
    """OUT/inputs.json (`start`): what the run read, by content; library versions."""

    init: InputHash | None
    init_state: TrainerState | None  # written as its JSON dump (io.to_json)
    tokenizer: InputHash
    stores: dict[str, StoreInput]
    mix_fingerprint: str
    config_hash: str
    versions: dict[str, str]


def read_status(out: Path) -> RunStatus | None:
    f = out / "status.json"
    return RunStatus.model_validate(read_json(f)) if f.is_file() else None


def write_status(out: Path, status: str, **info: Any) -> None:
    atomic_write_json(
        out / "status.json", RunStatus(status=status, **info).model_dump(exclude_none=True)
    )


def mark_interrupted(out: Path) -> None:
    """A run or probe in `out` whose status still says running (its process was stopped before
    its own handler got to it) now says interrupted; any other status stays."""
    status = read_status(out) if out.is_dir() else None
    if status is not None and status.status == "running":
        info = status.model_dump(exclude={"status", "pid", "time"}, exclude_none=True)
        write_status(out, "interrupted", **info)


def finished(out: Path, cls: type[R] = RunResult, name: str = "metrics.json") -> R | None:  # type: ignore[assignment]
    """The result (`cls`, read from `name`) of a finished run or probe in `out`, or None."""
    status = read_status(out)
    if status is None or status.status != "done" or not (out / name).is_file():
        return None
    return cls.model_validate(read_json(out / name))


def check_existing(
    out: Path,
    config: dict[str, Any],  # a config's identity() (JSON)
    what: str = "a run",
) -> None:
    """`out` must be new, empty, or hold `what` of the same config identity (then resumed)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass a folder")
    if not (out / "config.json").is_file():
        if not any(out.iterdir()):
            return
        raise MidtrainError(f"--out {out} exists and does not hold {what}; use a new folder")
    if identity(read_json(out / "config.json")) != config:
        raise MidtrainError(
            f"--out {out} holds {what} of another config; use another --out (or delete it)"
        )


def check_inputs_unchanged(out: Path, plan: RunPlan) -> None:
    f = out / "inputs.json"
    if f.is_file() and read_json(f).get("mix_fingerprint") != plan.sampler.fingerprint():
        raise MidtrainError(
            f"--out {out}: its stores or mix changed since the run started; use another --out"
        )


def start(out: Path, plan: RunPlan, from_step: int) -> None:
    """Create the directory (config.json and inputs.json on first start); status running."""
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "inputs.json").is_file():
        atomic_write_json(out / "config.json", plan.resolved())
        atomic_write_json(out / "inputs.json", _inputs(plan))
    write_status(out, "running", pid=os.getpid(), from_step=from_step, time=time.time())


def _inputs(plan: RunPlan) -> RunInputs:
    cfg = plan.cfg
    return {
        "init": {"path": cfg.init, "hash": hash_tree(cfg.init)} if cfg.init else None,
        "init_state": plan.init_state,
        "tokenizer": {"path": cfg.tokenizer or cfg.init, "hash": plan.tokenizer_hash},
        "stores": {
            n: {"path": str(s.path), "content_hash": s.content_hash} for n, s in plan.stores.items()
        },
        "mix_fingerprint": plan.sampler.fingerprint(),
        "config_hash": hash_obj(cfg.identity()),
        "versions": library_versions(),
    }


def finish(out: Path, plan: RunPlan, log: list[LogLine], wall_s: float, flops: float) -> RunResult:
    """Write metrics.json and status done."""
    tail = log[-max(1, math.ceil(len(log) / 10)) :]
    result = RunResult(
        steps=plan.steps,
        tokens=plan.tokens,
        final_loss=log[-1]["loss"],
        mean_loss_last_10pct=sum(r["loss"] for r in tail) / len(tail),
        first_loss=log[0]["loss"],
        start_lr=plan.schedule.start_lr,
        final_lr=plan.schedule.final_lr,
        wall_s=wall_s,
        tokens_per_s=plan.tokens / wall_s if wall_s > 0 else None,
        flops=flops,
        final_checkpoint=str(out / "final"),
        warnings=plan.warnings,
    )
    atomic_write_json(out / "metrics.json", result.model_dump(mode="json"))
    write_status(out, "done", step=plan.steps)
    return result
