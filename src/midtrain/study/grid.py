"""Timing x weight: the study from several start checkpoints, crossed with its fractions.

`starts = [...]` runs the whole study (control and every arm) from `checkpoint` and from each
earlier start, each start with its own control: every start is a complete study in
`OUT/starts/<label>/` (its own report, resume, executor). `grid.json`, `grid.md` and `grid.png`
cross start with fraction per candidate: the primary delta against the same start's control and
its interval (the study's statistics within each start). Liu, Neubig and Xiong (2025): data
introduced early tolerates higher weights; late introduction needs lower ones.
"""

from __future__ import annotations

import base64
from pathlib import Path

from pydantic import BaseModel

from midtrain.console import err_console, safe
from midtrain.io import atomic_write_bytes, atomic_write_text
from midtrain.report.render import fmt, fmt_ci, md_escape
from midtrain.study.config import StudyConfig
from midtrain.study.results import Interval, StudyResult

FORMAT = "midtrain-grid/1"


class GridStart(BaseModel):
    checkpoint: str
    label: str  # e.g. "49%" of the full run, or the folder's name
    tokens_seen: int | None = None
    progress: float | None = None  # tokens seen / full_run_tokens
    dir: str  # the start's study folder, relative to the grid's


class GridCell(BaseModel):
    start: str  # label
    candidate: str
    fraction: float | None  # None: the candidate's continued-pretraining arm
    arm: str
    verdict: str
    delta: float | None = None
    ci: Interval | None = None


class GridResult(BaseModel):
    format: str = FORMAT
    study: str
    metric: str
    starts: list[GridStart]
    cells: list[GridCell]


def start_list(cfg: StudyConfig) -> list[GridStart]:
    """The starts in order of tokens seen (earliest first), each with its folder."""
    from midtrain.study.plan import content_hash, slug
    from midtrain.train.checkpoint import read_trainer_state

    out = []
    for ckpt in [*cfg.starts, cfg.checkpoint]:
        state = read_trainer_state(ckpt)
        seen = state.tokens_seen if state is not None else None
        prog = seen / cfg.full_run_tokens if seen is not None and cfg.full_run_tokens else None
        label = f"{prog:.0%}" if prog is not None else Path(ckpt).name
        d = f"starts/{slug(label.rstrip('%'))}-{content_hash(ckpt)[:8]}"
        out.append(GridStart(checkpoint=ckpt, label=label, tokens_seen=seen, progress=prog, dir=d))
    labels = [s.label for s in out]
    for s in out:  # two starts with one label (no trainer state, same folder name): add the hash
        if labels.count(s.label) > 1:
            s.label = f"{s.label} ({s.dir.rsplit('-', 1)[1][:6]})"
    return sorted(out, key=lambda s: (s.tokens_seen is None, s.tokens_seen or 0))


def sub_config(cfg: StudyConfig, start: GridStart) -> StudyConfig:
    return cfg.model_copy(update={"checkpoint": start.checkpoint, "starts": [],
                                  "name": f"{cfg.name} @ {start.label}"})  # fmt: skip


def run_grid(cfg: StudyConfig, out: Path, **run_kw) -> tuple[GridResult, list[StudyResult]]:
    """Run the study from every start (each resumable), then write grid.json/md/png."""
    from midtrain.study.runner import prepare, run_study

    out = Path(out).resolve()
    starts = start_list(cfg)
    for s in starts:  # every input check of every start before anything runs
        prepare(sub_config(cfg, s), out / s.dir)
    results = []
    for s in starts:
        err_console.print(f"[bold]start {safe(s.label)}[/] ({safe(s.checkpoint)})")
        results.append(run_study(sub_config(cfg, s), out / s.dir, **run_kw))
    grid = GridResult(study=cfg.name, metric=cfg.analysis.primary, starts=starts,
                      cells=[c for s, r in zip(starts, results, strict=True) for c in _cells(s, r)])  # fmt: skip
    write_grid(grid, out)
    return grid, results


def _cells(start: GridStart, r: StudyResult) -> list[GridCell]:
    return [
        GridCell(start=start.label, candidate=a.name, fraction=None if a.cpt else a.fraction,
                 arm=a.arm, verdict=a.verdict, delta=a.primary.delta if a.primary else None,
                 ci=a.primary.ci if a.primary else None)
        for a in r.arms
    ]  # fmt: skip


def _frac(c: GridCell) -> str:
    return "cpt" if c.fraction is None else f"{c.fraction:g}"


def table(g: GridResult):  # noqa: ANN201 - a rich Table
    from rich.table import Table

    t = Table(
        title=f"timing x weight: {safe(g.study)}: arm − control of the same start ({g.metric})"
    )
    for col in ("start", "candidate", "fraction", "verdict", "Δ primary", "CI"):
        t.add_column(col)
    for c in g.cells:
        t.add_row(safe(c.start), safe(c.candidate), _frac(c), c.verdict, fmt(c.delta), fmt_ci(c.ci))
    return t


def markdown(g: GridResult) -> str:
    lines = [f"# Timing x weight: {md_escape(g.study)}", "",
             f"Δ primary ({md_escape(g.metric)}) of each arm against the control of the same start; "
             "95% interval; verdict. Rows: start checkpoints (share of the full run), earliest "
             "first.", ""]  # fmt: skip
    for cand in dict.fromkeys(c.candidate for c in g.cells):
        cells = [c for c in g.cells if c.candidate == cand]
        fracs = list(dict.fromkeys(_frac(c) for c in cells))
        lines += [f"## {md_escape(cand)}", "", "| start | " + " | ".join(fracs) + " |",
                  "|---|" + "---|" * len(fracs)]  # fmt: skip
        for s in g.starts:
            row = {_frac(c): c for c in cells if c.start == s.label}
            vals = [f"{fmt(row[f].delta)} {fmt_ci(row[f].ci)} {row[f].verdict}" if f in row else "–"
                    for f in fracs]  # fmt: skip
            lines.append(f"| {md_escape(s.label)} | " + " | ".join(vals) + " |")
        lines.append("")
    lines += ["![grid](grid.png)", ""]
    return "\n".join(lines)


def plot(g: GridResult) -> bytes:
    """One heatmap per candidate: start (rows) x fraction (columns), the delta and its interval."""
    import numpy as np

    from midtrain.report.plots import figure, label, png

    cands = list(dict.fromkeys(c.candidate for c in g.cells))
    with figure(1, len(cands), figsize=(4.2 * len(cands), 1.2 + 0.7 * len(g.starts)),
                squeeze=False) as (fig, axes):  # fmt: skip
        for ax, cand in zip(axes[0], cands, strict=True):
            cells = [c for c in g.cells if c.candidate == cand]
            fracs = list(dict.fromkeys(_frac(c) for c in cells))
            z = np.full((len(g.starts), len(fracs)), np.nan)
            for c in cells:
                i = next(k for k, s in enumerate(g.starts) if s.label == c.start)
                if c.delta is not None:
                    z[i, fracs.index(_frac(c))] = c.delta
                    lo, hi = c.ci or (np.nan, np.nan)
                    ax.text(fracs.index(_frac(c)), i, f"{c.delta:+.2f}\n[{lo:+.2f},{hi:+.2f}]",
                            ha="center", va="center", fontsize=7)  # fmt: skip
            lim = np.nanmax(np.abs(z)) if np.isfinite(z).any() else 1.0
            ax.imshow(z, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            ax.set_xticks(range(len(fracs)), fracs)
            ax.set_yticks(range(len(g.starts)), [s.label for s in g.starts])
            ax.set_xlabel("fraction")
            ax.set_title(label(cand, 30), fontsize=9)
        axes[0][0].set_ylabel("start")
        return png(fig)


def write_grid(g: GridResult, out: Path) -> None:
    image = plot(g)
    atomic_write_bytes(out / "grid.png", image)
    atomic_write_text(out / "grid.json", g.model_dump_json(indent=2))
    atomic_write_text(out / "grid.md", markdown(g))
    b64 = base64.b64encode(image).decode()
    atomic_write_text(out / "grid.html", _html(g, b64))


def _html(g: GridResult, b64: str) -> str:
    import html

    rows = "".join(
        f"<tr><td>{html.escape(c.start)}</td><td>{html.escape(c.candidate)}</td>"
        f"<td>{html.escape(_frac(c))}</td><td>{fmt(c.delta)}</td><td>{fmt_ci(c.ci)}</td>"
        f"<td>{html.escape(c.verdict)}</td></tr>"
        for c in g.cells
    )
    return (f"<!doctype html><meta charset='utf-8'><title>{html.escape(g.study)}: timing x weight"
            f"</title><h1>Timing x weight: {html.escape(g.study)}</h1><img alt='grid' "
            f"src='data:image/png;base64,{b64}'><table border=1><tr><th>start</th><th>candidate"
            "</th><th>fraction</th><th>Δ primary</th><th>CI</th><th>verdict</th></tr>"
            f"{rows}</table>")  # fmt: skip
