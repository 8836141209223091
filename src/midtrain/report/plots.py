"""The report's plots, as PNG bytes (embedded in report.html, written to plots/*.png).

One style for all: `figure()` opens an Agg figure, `png()` renders and closes it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from midtrain.study.results import StudyResult
from midtrain.train.log import read_log

DPI = 110


@contextmanager
def figure(*args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """`plt.subplots(*args, **kwargs)` on the Agg backend; the figure is closed afterwards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(*args, **kwargs)
    try:
        with warnings.catch_warnings():  # missing glyphs of a user's name, tight-layout advice
            warnings.simplefilter("ignore", UserWarning)
            yield fig, axes
    finally:
        plt.close(fig)


def png(fig: Any) -> bytes:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def label(name: str, width: int = 40) -> str:
    """A user's name shortened for an axis (the tables show it whole)."""
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_deltas(r: StudyResult) -> bytes:
    """Primary, per-task and per-domain deltas of every arm with their intervals."""
    tasks, domains = r.eval.tasks, r.eval.domains
    height = 0.5 + 0.45 * max(1, len(r.arms)) * max(1, len(tasks) + 1)
    with figure(1, 2, figsize=(12, height)) as (fig, axes):
        for ax, keys, title in (
            (axes[0], ["primary", *tasks], f"task Δ ({r.eval.primary_metric})"),
            (axes[1], domains, "domain Δ bits-per-byte (lower is better)"),
        ):
            labels, vals, lo, hi = [], [], [], []
            for arm in r.arms:
                for k in keys:
                    point = _point(arm, k)
                    if point is None:
                        continue
                    value, ci = point
                    t = arm.tasks.get(k)
                    unit = f" ({t.metric})" if t and t.metric != r.eval.primary_metric else ""
                    labels.append(label(f"{arm.arm} · {k}{unit}", 60))
                    vals.append(value)
                    lo.append(value - ci[0])
                    hi.append(ci[1] - value)
            y = list(range(len(labels)))[::-1]
            ax.errorbar(vals, y, xerr=[lo, hi], fmt="o", capsize=3)
            ax.axvline(0, color="grey", lw=1)
            ax.set_yticks(y, labels, fontsize=8)
            ax.set_title(title, fontsize=10)
        return png(fig)


def _point(arm: Any, key: str) -> tuple[float, list[float]] | None:
    if key == "primary":  # the tasks' primary (an SFT-decided arm keeps it in base_primary)
        p = arm.base_primary if getattr(arm, "decided_on", "base") == "sft" else arm.primary
        return (p.delta, p.ci) if p else None
    if key in arm.tasks:
        return arm.tasks[key].delta, arm.tasks[key].ci
    if key in arm.domains:
        return arm.domains[key].delta_bpb, arm.domains[key].ci
    return None


def plot_loss(r: StudyResult, out: Path) -> bytes:
    """Training loss against tokens of every run (solid: the first seed, dashed: the others)."""
    runs = r.control.runs + [run for a in r.arms for run in a.runs]
    first_seed = min((run.seed for run in runs), default=0)
    colors: dict[str, str] = {}
    with figure(figsize=(8, 4.5)) as (fig, ax):
        for run in runs:
            rows = [x for x in read_log(out / run.dir / "log.jsonl") if x.get("loss") is not None]
            if not rows:
                continue
            new = run.arm not in colors
            c = colors.setdefault(run.arm, f"C{len(colors) % 10}")
            ax.plot(
                [x["tokens"] for x in rows], [x["loss"] for x in rows], color=c, lw=1,
                ls="-" if run.seed == first_seed else "--", label=label(run.arm) if new else None,
            )  # fmt: skip
        ax.set_xlabel("tokens")
        ax.set_ylabel("training loss (on each run's own mix)")
        ax.legend(fontsize=8)
        return png(fig)


def plot_domains(r: StudyResult) -> bytes:
    """Held-out bits per byte per domain: the control's mean, and each arm's (control + Δ)."""
    import numpy as np

    domains = r.eval.domains
    ctrl = [float(np.mean(r.control.domains.get(d) or [np.nan])) for d in domains]
    series = [("control", ctrl)]
    for arm in r.arms:
        deltas = [arm.domains[d].delta_bpb if d in arm.domains else np.nan for d in domains]
        series.append((label(arm.arm), [c + dl for c, dl in zip(ctrl, deltas, strict=True)]))
    with figure(figsize=(max(6, 1.6 * len(domains)), 4)) as (fig, ax):
        w = 0.8 / len(series)
        x = np.arange(len(domains))
        for i, (name, vals) in enumerate(series):
            ax.bar(x + i * w, vals, w, label=name)
        ax.set_xticks(x + 0.4 - w / 2, domains)
        ax.set_ylabel("held-out bits per byte (mean over docs and seeds)")
        ax.legend(fontsize=8)
        return png(fig)


def plot_trajectories(r: StudyResult) -> bytes | None:
    """Δ primary against anneal tokens: one line per arm with its interval as a band, the 0 line
    (None when no arm has a trajectory: eval.points = [1.0])."""
    import matplotlib.ticker

    arms = [a for a in r.arms if a.trajectory is not None]
    if not arms:
        return None
    with figure(figsize=(8, 4.5)) as (fig, ax):
        for a in arms:
            pts = [p for p in a.trajectory.points if p.primary is not None]
            if not pts:
                continue
            x = [p.tokens for p in pts]
            (line,) = ax.plot(x, [p.primary.delta for p in pts], "o-", label=label(a.arm))
            ax.fill_between(x, [p.primary.ci[0] for p in pts], [p.primary.ci[1] for p in pts],
                            color=line.get_color(), alpha=0.15)  # fmt: skip
        ax.axhline(0, color="grey", lw=1)
        ax.set_xlabel("anneal tokens at the eval point (a point mid-cooldown is at a higher LR)")
        ax.set_ylabel(f"Δ primary ({r.eval.primary_metric})")
        ax.set_title("trajectories: arm − control at each eval point", fontsize=10)
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:,.0f}"))
        # beside the axes: the bands overlap, and a legend inside would cover one of them
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        return png(fig)
