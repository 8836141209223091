"""What results.json says about trajectories: each arm's deltas at every eval point of its anneal,
and whether they have settled (stats/trajectory.py makes them).
"""

from __future__ import annotations

from pydantic import BaseModel

Interval = list[float]  # [low, high]


class Estimate(BaseModel):
    """A delta (arm - control, or a change of one) with its interval, from stats/contrast.py."""

    delta: float
    ci: Interval
    se: float | None = None
    df: float | None = None
    p: float | None = None  # two-sided, unadjusted


class GuardPoint(BaseModel):
    target: str
    status: str  # ok | at-risk | broken | missing, unadjusted (the verdict's family is the end's)
    delta: float | None = None
    ci: Interval | None = None


class TrajectoryPoint(BaseModel):
    """One eval point of an arm: its deltas as the final verdict computes them at the end."""

    fraction: float  # of the run's tokens
    tokens: int  # anneal tokens trained at this point
    primary: Estimate | None = None
    tasks: dict[str, Estimate] = {}
    domains: dict[str, Estimate] = {}  # delta bits per byte (lower is better)
    guards: list[GuardPoint] = []


class Trajectory(BaseModel):
    """An arm's deltas along its anneal (one entry per eval point, the end last)."""

    points: list[TrajectoryPoint]
    runs: int  # runs (arm and control) evaluated at every point
    change: Estimate | None = None  # primary delta at the last point minus the one before
    still_moving: bool | None = None  # None: fewer than 2 points or no interval
    why_moving: str = ""


class ControlPoint(BaseModel):
    """The control's held-out bits per byte on a base domain at one point, minus the start
    checkpoint's (a t-interval over the control's seeds): what the cooldown itself did."""

    fraction: float
    tokens: int
    drop: dict[str, Estimate] = {}  # per base domain (below 0: the loss fell)


class TrajectoryInfo(BaseModel):
    """The study's eval points, the control's own base-domain loss along them, and what the
    evaluations cost."""

    fractions: list[float]
    tokens: list[int]
    control: list[ControlPoint] = []
    anneal_too_short: str | None = None  # why the flag fired (None: it did not)
    eval_seconds: float = 0.0  # every evaluation of the study (runs' points, ends, the start)
    train_seconds: float = 0.0  # every run's training wall time
    eval_share: float | None = None  # eval / (eval + train); SFT probes are not counted
