"""The proposal as a terminal table, as JSON, and as the round file's text."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TypedDict

from rich.table import Table

from midtrain.console import safe
from midtrain.optimize.proposal import Predicted, Proposal
from midtrain.study.tables import RoundTable


class PredictedJson(TypedDict):
    """A `Predicted` metric in the proposal's JSON (its fields)."""

    metric: str
    current: float
    proposed: float
    delta: float
    se: float
    higher_better: bool
    tolerance: float | None
    cv_rmse: float | None
    cv_mixes: int
    cv_worst: str | None
    measured: float | None
    auto: bool


class SourceJson(TypedDict):
    """One source of the proposal's JSON: its shares and repetition cap."""

    current: float
    proposed: float
    low: float
    high: float
    cap: float
    cap_share: float


class ProposalJson(TypedDict):
    """`midtrain optimize --json`."""

    model: str
    law: str
    points: int
    mixes: int
    current_name: str
    sources: dict[str, SourceJson]
    primary: PredictedJson
    guards: list[PredictedJson]
    targets: list[str]
    extrapolation: list[str]
    notes: list[str]
    round: RoundTable


def mix_table(p: Proposal) -> Table:
    t = Table(title=f"mix proposal ({p.model}): current = {safe(p.current_name)}")
    for c in ("source", "current", "proposed", "measured ± margin", "repetition cap"):
        t.add_column(c, justify="left" if c == "source" else "right")
    for i, s in enumerate(p.sources):
        cap = p.round.get("max_repetition", {}).get(s, p.caps[s])
        t.add_row(safe(s), f"{p.current[i]:.1%}", f"{p.proposed[i]:.1%}",
                  f"[{p.lo[i]:.0%}, {p.hi[i]:.0%}]",
                  f"{cap:g} ep (≤ {min(p.cap_share[s], 1.0):.0%})")  # fmt: skip
    return t


def metric_table(p: Proposal) -> Table:
    t = Table(title="predicted at the proposal vs the current mix (± se: parameter uncertainty; "
              "measured: the runs at the current mix)")  # fmt: skip
    cols = ("metric", "measured", "current", "proposed", "Δ", "± se", "tolerance", "CV rmse",
            "worst mix")  # fmt: skip
    for c in cols:
        t.add_column(c, justify="left" if c == "metric" else "right")
    for m in [p.primary, *p.guards]:
        tol = (
            "—"
            if m.tolerance is None
            else f"Δ {'≥ -' if m.higher_better else '≤ +'}{m.tolerance:g}"
            + (" (auto)" if m.auto else "")
        )
        cv = "—" if m.cv_rmse is None else f"{m.cv_rmse:.3g}"
        meas = "—" if m.measured is None else f"{m.measured:.4f}"
        t.add_row(safe(m.metric), meas, f"{m.current:.4f}", f"{m.proposed:.4f}", f"{m.delta:+.4f}",
                  f"{m.se:.4f}", tol, cv, safe(m.cv_worst or "—"))  # fmt: skip
    return t


def lines(p: Proposal) -> list[str]:
    """What the proposal rests on, and how far it may be trusted."""
    out = [f"fit: {p.points} points at {p.mixes} distinct mixes; primary {safe(p.law)}"]
    if p.outside:
        out.append("extrapolation: the optimum without the trust region lies outside the measured "
                   f"weights ({'; '.join(p.outside)}); the proposal stops at the trust region. "
                   "Measure mixes nearer to it before going further")  # fmt: skip
    else:
        out.append("extrapolation: none; the optimum lies within the measured weights ± margin")
    m = p.primary
    if m.measured is not None and abs(m.measured - m.current) > abs(m.delta):
        out.append(f"lack of fit: at the current mix the law predicts {m.current:.4f} and its runs "
                   f"measured {m.measured:.4f}; that residual ({m.measured - m.current:+.4f}) is "
                   "larger than the predicted gain")  # fmt: skip
    z = p.primary.delta / p.primary.se if p.primary.se > 0 else float("inf")
    if z < 2:
        out.append(f"the predicted gain is {z:.1f} se from 0: the fit cannot tell this mix from "
                   "the current one; treat it as a direction to measure, not a result")  # fmt: skip
    return out + [f"note: {n}" for n in p.notes]


def to_json(p: Proposal) -> ProposalJson:
    def pred(m: Predicted) -> PredictedJson:
        return PredictedJson(**asdict(m))

    return {
        "model": p.model, "law": p.law, "points": p.points, "mixes": p.mixes,
        "current_name": p.current_name,
        "sources": {s: {"current": float(p.current[i]), "proposed": float(p.proposed[i]),
                        "low": float(p.lo[i]), "high": float(p.hi[i]), "cap": p.caps[s],
                        "cap_share": p.cap_share[s]}
                    for i, s in enumerate(p.sources)},
        "primary": pred(p.primary), "guards": [pred(g) for g in p.guards],
        "targets": p.targets, "extrapolation": p.outside, "notes": p.notes, "round": p.round,
    }  # fmt: skip


def round_head(p: Proposal, studies: list[Path], history: Path | None) -> list[str]:
    """The round file's header comments: what the proposal rests on and predicts."""
    return [
        "# An integration round proposed by `midtrain optimize` from:",
        *[f"#   {s}" for s in studies], *([f"#   history {history}"] if history else []),
        f"# model: {p.model}; {p.points} points at {p.mixes} distinct mixes",
        f"# predicted {p.primary.metric}: {p.primary.delta:+.4f} ± {p.primary.se:.4f} (se) "
        f"vs {p.current_name}",
        *[f"# predicted {g.metric}: {g.delta:+.4f} ± {g.se:.4f} (tolerance {g.tolerance:g}"
          f"{', automatic' if g.auto else ''})" for g in p.guards],
        *[f"# {line}" for line in lines(p)[1:]],
        "# Then: midtrain integrate run THIS --out HISTORY",
    ]  # fmt: skip
