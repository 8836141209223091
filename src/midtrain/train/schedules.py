"""Learning-rate schedules: a cooldown from a start LR to a final LR, with optional (re-)warmup.

A schedule is a registered `Schedule` (a name and a decay shape of the progress `p` in [0, 1]).
`make_schedule(...)` binds it to a run: step `s` (0-based) trains at `lr_at(s)`, and `lr_at(total)`
is the LR the *next* step would use, which is what a checkpoint records as "the LR it was trained
at". So the first step of a run trains at the start LR and the run ends exactly at the final LR:

    warmup (s < W):   lr = start * (s + 1) / W
    decay  (s >= W):  p = (s - W) / (total - W),  lr = shape(p, start, final)

Shapes: `constant` (the stable phase of WSD), `linear`, `cosine`, `1-sqrt` (Hägele et al. 2024:
factor 1 - sqrt(p)) and `exp` (MiniCPM-style geometric decay, which needs final > 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypedDict

from midtrain.errors import MidtrainError

Shape = Callable[[float, float, float], float]  # (progress, start_lr, final_lr) -> lr


@dataclass(frozen=True)
class Schedule:
    """A named decay shape. `default_final_fraction` applies when no final LR is configured."""

    name: str
    shape: Shape
    default_final_fraction: float = 0.0
    needs_positive_final: bool = False


def _blend(factor: float, start: float, final: float) -> float:
    """final + (start - final) * factor, with factor going from 1 to 0 over the decay."""
    return final + (start - final) * factor


SCHEDULES: dict[str, Schedule] = {
    s.name: s
    for s in (
        Schedule("constant", lambda p, a, b: a),
        Schedule("linear", lambda p, a, b: _blend(1 - p, a, b)),
        Schedule(
            "cosine",
            lambda p, a, b: _blend(0.5 * (1 + math.cos(math.pi * p)), a, b),
        ),
        Schedule(
            "1-sqrt",
            lambda p, a, b: _blend(1 - math.sqrt(p), a, b),
        ),
        Schedule(
            "exp",
            lambda p, a, b: a * (b / a) ** p,
            default_final_fraction=0.01,
            needs_positive_final=True,
        ),
    )
}


class ScheduleRecord(TypedDict):
    """`BoundSchedule.to_dict()`: a bound schedule as a checkpoint's trainer.json and a run's
    config.json record it."""

    name: str
    start_lr: float
    final_lr: float
    total_steps: int
    warmup_steps: int


@dataclass(frozen=True)
class BoundSchedule:
    """A schedule bound to a run's start/final LR, total steps and warmup."""

    schedule: Schedule
    start_lr: float
    final_lr: float
    total_steps: int
    warmup_steps: int = 0

    @property
    def name(self) -> str:
        return self.schedule.name

    def lr_at(self, step: int) -> float:
        """LR of optimizer step `step` (0-based); `lr_at(total_steps)` is where the run ends."""
        w, n = self.warmup_steps, self.total_steps
        if step < w:
            return self.start_lr * (step + 1) / w
        p = min(1.0, (step - w) / (n - w)) if n > w else 1.0
        return float(self.schedule.shape(p, self.start_lr, self.final_lr))

    def to_dict(self) -> ScheduleRecord:
        return {
            "name": self.name,
            "start_lr": self.start_lr,
            "final_lr": self.final_lr,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


def get_schedule(name: str) -> Schedule:
    if name not in SCHEDULES:
        raise MidtrainError(
            f"schedule.name: unknown schedule {name!r}; use one of {', '.join(SCHEDULES)}"
        )
    return SCHEDULES[name]


def resolve_final_lr(
    name: str, start_lr: float, final_lr: float | None, final_lr_fraction: float | None
) -> float:
    """The absolute final LR from `final_lr` or `final_lr_fraction` (or the shape's default)."""
    sched = get_schedule(name)
    if final_lr is not None and final_lr_fraction is not None:
        raise MidtrainError(
            "schedule: set final_lr or final_lr_fraction, not both; remove one of them"
        )
    if name == "constant":
        return start_lr
    if final_lr is None:
        frac = sched.default_final_fraction if final_lr_fraction is None else final_lr_fraction
        final_lr = start_lr * frac
    if sched.needs_positive_final and final_lr <= 0:
        raise MidtrainError(
            f"schedule.final_lr: {name!r} decays geometrically and needs a final LR > 0; "
            "set final_lr_fraction = 0.01 (the default) or final_lr > 0"
        )
    return float(final_lr)


def make_schedule(
    name: str, start_lr: float, final_lr: float, total_steps: int, warmup_steps: int = 0
) -> BoundSchedule:
    sched = get_schedule(name)
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise MidtrainError(f"schedule.start_lr: {start_lr} must be a positive number, e.g. 3e-4")
    if not (math.isfinite(final_lr) and final_lr >= 0):
        raise MidtrainError(f"schedule.final_lr: {final_lr} must be >= 0")
    if sched.needs_positive_final and final_lr <= 0:
        raise MidtrainError(f"schedule.final_lr: {name!r} needs a final LR > 0")
    if total_steps < 1:
        raise MidtrainError(f"tokens: the run has {total_steps} optimizer steps; it needs >= 1")
    if not 0 <= warmup_steps <= total_steps:
        raise MidtrainError(
            f"schedule.warmup_steps: {warmup_steps} must be in [0, {total_steps}] (the run's steps)"
        )
    return BoundSchedule(sched, float(start_lr), float(final_lr), total_steps, warmup_steps)
