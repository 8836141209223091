"""The run's metrics log: one JSONL line per optimizer step, and the non-finite-loss guard.

Step metrics stay on the device as tensors and are written every `LOG_EVERY` steps (one host sync
each). A non-finite loss or gradient norm raises `Diverged` when the line is written, before any
checkpoint could save the broken weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NotRequired, Protocol, TypedDict

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_jsonl

FAILED_EXIT_CODE = 3  # a run that stopped on a non-finite loss (bad input stays 2)
LOG_EVERY = {"cpu": 1, "cuda": 10}  # steps between log flushes (one host sync each)


class LogLine(TypedDict):
    """One line of log.jsonl. In the file a value that was not finite is null (`_finite`); an
    external trainer's log (train/external.py) need only hold tokens and loss."""

    step: int
    tokens: int
    lr: float
    loss: float | None
    grad_norm: float | None
    tok_s: float


class DivergedInfo(TypedDict):
    """What a divergence adds to status.json (`rundir.RunStatus` fields); an SFT grid whose every
    LR diverged gives the reason alone."""

    reason: str
    step: NotRequired[int]
    last_good: NotRequired[LogLine | None]


class Diverged(MidtrainError):
    """A non-finite loss or gradient norm stopped the run (CLI exit code 3)."""

    exit_code = FAILED_EXIT_CODE

    def __init__(self, message: str, info: DivergedInfo):
        super().__init__(message)
        self.info = info


class MetricsSink(Protocol):
    """Where finished step lines go (the JSONL log always; a tracker can be another sink)."""

    def log(self, row: Mapping[str, float], step: int) -> None: ...


class RunLog:
    """log.jsonl: step metrics buffered as tensors, written (one host sync) every few steps."""

    def __init__(self, path: Path | None, device: str, tokens_per_step: int, wall_s: float = 0.0):
        """`path` None: lines are checked (`Diverged`) but not written (ranks > 0 of a job)."""
        self.path, self.every, self.tps = path, LOG_EVERY.get(device, 1), tokens_per_step
        self.wall_s = wall_s
        self.last_good: LogLine | None = None
        self.sinks: list[MetricsSink] = []
        self._buf: list[tuple[int, int, float, Any, Any]] = []
        self._t0 = time.perf_counter()

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def record(self, step: int, tokens: int, lr: float, loss: Any, grad_norm: Any) -> None:
        self._buf.append((step, tokens, lr, loss, grad_norm))

    def flush(self) -> list[LogLine]:
        """Write the buffered lines; raises `Diverged` on a non-finite loss or grad norm."""
        import torch

        if not self._buf:
            return []
        values = torch.stack([torch.stack([b[3], b[4]]) for b in self._buf]).tolist()
        now = time.perf_counter()
        dt, self._t0 = now - self._t0, now
        self.wall_s += dt
        tok_s = len(self._buf) * self.tps / dt if dt > 0 else 0.0
        rows: list[LogLine] = [
            {"step": s, "tokens": n, "lr": lr, "loss": v[0], "grad_norm": v[1], "tok_s": tok_s}
            for (s, n, lr, _, _), v in zip(self._buf, values, strict=True)
        ]
        self._buf.clear()
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as f:  # NaN/inf become null (strict JSON)
                f.writelines(json.dumps(_finite(r)) + "\n" for r in rows)
        for r in rows:
            if not (math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"])):
                raise _diverged(r, self.last_good)
            self.last_good = r
            for sink in self.sinks:
                sink.log(r, r["step"])
        return rows

    def read(self) -> list[LogLine]:
        return read_log(self.path)

    def truncate(self, step: int) -> None:
        """Drop lines after `step` (written after the state we resume from)."""
        self._t0 = time.perf_counter()
        if self.path is None:
            return
        rows = [r for r in self.read() if r["step"] <= step]
        self.last_good = rows[-1] if rows else None
        atomic_write_jsonl(self.path, rows)


def read_log(path: Path) -> list[LogLine]:
    """The lines of a run's log.jsonl (empty when there is none)."""
    if not path.is_file():
        return []
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _finite(row: LogLine) -> dict[str, float | None]:  # a JSON line: NaN/inf become null
    return {k: v if not isinstance(v, float) or math.isfinite(v) else None for k, v in row.items()}


def _diverged(row: LogLine, last_good: LogLine | None) -> Diverged:
    msg = (
        f"non-finite loss/grad norm at step {row['step']} (loss {row['loss']}, grad_norm "
        f"{row['grad_norm']}, lr {row['lr']:.3g}); lower schedule.start_lr or check the data"
    )
    return Diverged(msg, {"step": row["step"], "reason": msg, "last_good": last_good})
