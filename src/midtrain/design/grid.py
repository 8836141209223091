"""Timing x weight: the study from several start checkpoints, crossed with its fractions.

`starts = [...]` runs the whole study (control and every arm) from `checkpoint` and from each
earlier start, each start with its own control: every start is a complete study in
`OUT/starts/<label>/` (its own report, resume, executor). `grid.json`, `grid.md` and `grid.png`
cross start with fraction per candidate: the primary delta against the same start's control and
its interval (the study's statistics within each start), and, beside it, each task's delta, the
SFT probe's (SFT score, SFT validation loss and forgetting per set) and midtraining minus
continued pretraining. Liu, Neubig and Xiong (2025): data introduced early tolerates higher
weights; late introduction needs lower ones.

`starts_mode = "cooldown"` (the default) gives every start the study's own `tokens` and
[schedule]; `"to_end"` trains each start to the end of `full_run_tokens` on its checkpoint's
schedule continued, as Liu et al. ran it (design/to_end.py).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from midtrain.console import err_console, safe
from midtrain.io import atomic_write_bytes, atomic_write_text
from midtrain.report.render import fmt, fmt_ci, md_escape
from midtrain.study.config import StudyConfig
from midtrain.study.results import Interval, StudyResult
from midtrain.train.config import ScheduleConfig

FORMAT = "midtrain-grid/1"


class GridStart(BaseModel):
    checkpoint: str
    label: str  # e.g. "49%" of the full run, or the folder's name
    tokens_seen: int | None = None
    progress: float | None = None  # tokens seen / full_run_tokens
    dir: str  # the start's study folder, relative to the grid's
    tokens: int | None = None  # each run's tokens from this start (to_end: to the full run's end)
    schedule: ScheduleConfig | None = None  # to_end: the schedule its runs continue
    schedule_from: Literal["checkpoint", "study"] | None = None  # to_end: whose schedule


class Est(BaseModel):
    """A delta and its interval."""

    delta: float | None = None
    ci: Interval | None = None


class GridCell(BaseModel):
    start: str  # label
    candidate: str
    fraction: float | None  # None: the candidate's continued-pretraining arm
    arm: str
    verdict: str
    delta: float | None = None
    ci: Interval | None = None
    tasks: dict[str, Est] = {}  # each task against the control (its primary metric, else score)
    sft: Est | None = None  # the SFT score: minus Δ SFT val loss, mean over sets (higher better)
    sft_val_loss: dict[str, Est] = {}  # per SFT set: Δ in-domain SFT val loss (lower is better)
    forgetting: dict[str, Est] = {}  # per SFT set: Δ bpb on the base mix after SFT (lower better)
    vs_cpt: Est | None = None  # this mixed arm minus its candidate's @cpt arm, on the primary


class GridResult(BaseModel):
    format: str = FORMAT
    study: str
    metric: str
    mode: Literal["cooldown", "to_end"] = "cooldown"
    full_run_tokens: int | None = None
    starts: list[GridStart]
    cells: list[GridCell]


def start_list(cfg: StudyConfig) -> list[GridStart]:
    """The starts in order of tokens seen (earliest first), each with its folder (and, to_end,
    its runs' tokens and schedule: a bad start is one line, before anything is written)."""
    from midtrain.driver.runner import named_errors

    with named_errors(cfg):
        out = [_start(cfg, ckpt, f"starts[{i}]" if i < len(cfg.starts) else "checkpoint")
               for i, ckpt in enumerate([*cfg.starts, cfg.checkpoint])]  # fmt: skip
    labels = [s.label for s in out]
    for s in out:  # two starts with one label (no trainer state, same folder name): add the hash
        if labels.count(s.label) > 1:
            s.label = f"{s.label} ({s.dir.rsplit('-', 1)[1][:6]})"
    return sorted(out, key=lambda s: (s.tokens_seen is None, s.tokens_seen or 0))


def _start(cfg: StudyConfig, ckpt: str, where: str) -> GridStart:
    from midtrain.design.to_end import start_budget, tokens_seen
    from midtrain.io import slug
    from midtrain.study.plan import content_hash
    from midtrain.train.checkpoint import read_trainer_state

    seen = tokens_seen(cfg, ckpt, read_trainer_state(ckpt))
    prog = seen / cfg.full_run_tokens if seen is not None and cfg.full_run_tokens else None
    label = f"{prog:.0%}" if prog is not None else Path(ckpt).name
    d = f"starts/{slug(label.rstrip('%'))}-{content_hash(ckpt)[:8]}"
    s = GridStart(checkpoint=ckpt, label=label, tokens_seen=seen, progress=prog, dir=d,
                  tokens=cfg.tokens)  # fmt: skip
    if cfg.starts_mode == "to_end":  # its own folder: its runs differ from the cooldown's
        b = start_budget(cfg, ckpt, where)
        s.dir, s.tokens, s.schedule, s.schedule_from = (
            f"{d}-to_end",
            b.tokens,
            b.schedule,
            b.schedule_from,
        )
    return s


def sub_config(cfg: StudyConfig, start: GridStart) -> StudyConfig:
    """The start's own study: its checkpoint, and to_end its tokens and schedule."""
    update = {"checkpoint": start.checkpoint, "starts": [], "starts_mode": "cooldown",
              "checkpoint_tokens": start.tokens_seen, "name": f"{cfg.name} @ {start.label}"}  # fmt: skip
    if cfg.starts_mode == "to_end" and start.schedule is not None:
        update |= {"tokens": start.tokens, "schedule": start.schedule}
    return cfg.model_copy(update=update)


def run_grid(cfg: StudyConfig, out: Path, **run_kw) -> tuple[GridResult, list[StudyResult]]:
    """Run the study from every start (each resumable), then write grid.json/md/png."""
    from midtrain.driver.runner import prepare, run_study

    out = Path(out).resolve()
    starts = start_list(cfg)
    for s in starts:  # every input check of every start before anything runs
        prepare(sub_config(cfg, s), out / s.dir)
    results = []
    for s in starts:
        err_console.print(f"[bold]start {safe(s.label)}[/] ({safe(s.checkpoint)})")
        results.append(run_study(sub_config(cfg, s), out / s.dir, **run_kw))
    grid = grid_result(cfg, starts, results)
    write_grid(grid, out)
    return grid, results


def grid_result(
    cfg: StudyConfig, starts: list[GridStart], results: list[StudyResult]
) -> GridResult:
    from midtrain.stats.probe_gains import SFT_METRIC

    metric = SFT_METRIC if cfg.analysis.decide_on == "sft" else cfg.analysis.primary
    cells = [c for s, r in zip(starts, results, strict=True) for c in _cells(s, r)]
    return GridResult(study=cfg.name, metric=metric, mode=cfg.starts_mode,
                      full_run_tokens=cfg.full_run_tokens, starts=starts, cells=cells)  # fmt: skip


def _cells(start: GridStart, r: StudyResult) -> list[GridCell]:
    vs = {v.arm: v.primary for v in r.versus_cpt if v.primary is not None}
    out = []
    for a in r.arms:
        sets = a.probe.sets if a.probe else {}
        sft = a.probe.primary if a.probe else None
        out.append(GridCell(
            start=start.label, candidate=a.name, fraction=None if a.cpt else a.fraction,
            arm=a.arm, verdict=a.verdict, delta=a.primary.delta if a.primary else None,
            ci=a.primary.ci if a.primary else None,
            tasks={t: Est(delta=d.delta, ci=d.ci) for t, d in a.tasks.items()},
            sft=Est(delta=sft.delta, ci=sft.ci) if sft else None,
            sft_val_loss={n: Est(delta=d.delta_val_loss, ci=d.ci) for n, d in sets.items()},
            forgetting={n: Est(delta=d.forgetting.delta_bpb, ci=d.forgetting.ci)
                        for n, d in sets.items() if d.forgetting is not None},
            vs_cpt=Est(delta=vs[a.arm].delta, ci=vs[a.arm].ci) if a.arm in vs else None,
        ))  # fmt: skip
    return out


def _frac(c: GridCell) -> str:
    return "cpt" if c.fraction is None else f"{c.fraction:g}"


def table(g: GridResult):  # noqa: ANN201 - a rich Table
    from rich.table import Table

    t = Table(
        title=f"timing x weight: {safe(g.study)}: arm − control of the same start ({g.metric})"
    )
    sft, vs = any(c.sft for c in g.cells), any(c.vs_cpt for c in g.cells)
    cols = ["start", "candidate", "fraction", "verdict", "Δ primary", "CI"]
    for col in cols + ["SFT score"] * sft + ["MT − CPT"] * vs:
        t.add_column(col)
    for c in g.cells:
        extra = [_pm(c.sft)] * sft + [_pm(c.vs_cpt)] * vs
        t.add_row(safe(c.start), safe(c.candidate), _frac(c), c.verdict, fmt(c.delta),
                  fmt_ci(c.ci), *extra)  # fmt: skip
    return t


def _pm(e: Est | None, digits: int = 3) -> str:
    return f"{fmt(e.delta, digits)} {fmt_ci(e.ci, digits)}" if e is not None else "–"


def details(g: GridResult, cand: str) -> tuple[list[str], list[list[str]]]:
    """One candidate's cells with every column (display strings): the primary, each task, the
    SFT probe's score, validation loss and forgetting per set, and midtraining − CPT."""
    cells = [c for c in g.cells if c.candidate == cand]
    tasks = list(dict.fromkeys(t for c in cells for t in c.tasks))
    sets = list(dict.fromkeys(n for c in cells for n in c.sft_val_loss))
    sft, vs = any(c.sft for c in cells), any(c.vs_cpt for c in cells)
    head = ["start", "fraction", "verdict", "Δ primary", *(f"Δ {t}" for t in tasks),
            *["SFT score"] * sft, *(f"Δ SFT loss {n}" for n in sets),
            *(f"forgetting {n}" for n in sets), *["MT − CPT"] * vs]  # fmt: skip
    rows = [[c.start, _frac(c), c.verdict, _pm(Est(delta=c.delta, ci=c.ci)),
             *(_pm(c.tasks.get(t)) for t in tasks), *[_pm(c.sft)] * sft,
             *(_pm(c.sft_val_loss.get(n)) for n in sets),
             *(_pm(c.forgetting.get(n), 4) for n in sets), *[_pm(c.vs_cpt)] * vs]
            for c in cells]  # fmt: skip
    return head, rows


def _start_lines(g: GridResult) -> list[str]:
    if g.mode == "to_end":
        head = (f"Each start trained to the end of the full run ({g.full_run_tokens:,} tokens; "
                "starts_mode = \"to_end\"), on its checkpoint's schedule continued:")  # fmt: skip
    else:
        head = 'Each start ran the study\'s own cooldown (starts_mode = "cooldown"):'
    lines = [head, "", "| start | tokens seen | run tokens | schedule |", "|---|---|---|---|"]
    for s in g.starts:
        seen = f"{s.tokens_seen:,}" if s.tokens_seen is not None else "–"
        run = f"{s.tokens:,}" if s.tokens is not None else "–"
        sched = "the study's"
        if s.schedule is not None:
            sched = f"{s.schedule.name} to {_final(s.schedule)} (from the {s.schedule_from})"
        lines.append(f"| {md_escape(s.label)} | {seen} | {run} | {md_escape(sched)} |")
    return [*lines, ""]


def _final(s: ScheduleConfig) -> str:
    if s.final_lr is not None:
        return f"{s.final_lr:g}"
    return f"{s.final_lr_fraction or 0:g} x its start LR"


def markdown(g: GridResult) -> str:
    lines = [f"# Timing x weight: {md_escape(g.study)}", "",
             f"Δ primary ({md_escape(g.metric)}) of each arm against the control of the same start; "
             "95% interval; verdict. Rows: start checkpoints (share of the full run), earliest "
             "first.", "", *_start_lines(g)]  # fmt: skip
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
        head, rows = details(g, cand)
        lines += ["", "| " + " | ".join(md_escape(h) for h in head) + " |",
                  "|" + "---|" * len(head)]  # fmt: skip
        lines += ["| " + " | ".join([md_escape(r[0]), *r[1:]]) + " |" for r in rows]  # numbers
        lines.append("")
    lines += [_DETAILS_NOTE, "", "![grid](grid.png)", ""]
    return "\n".join(lines)


_DETAILS_NOTE = (
    "Each Δ is the arm minus the control of the same start (95% interval). SFT score: minus the "
    "Δ SFT validation loss, mean over sets (higher is better); Δ SFT loss: in-domain SFT "
    "validation loss (lower is better); forgetting: Δ bits per byte on the base mix after SFT "
    "(lower: forgot less); MT − CPT: the mixed arm minus the candidate's @cpt arm on the primary, "
    "from their paired per-seed differences (each start's report.md)."
)


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

    def tr(cells: list[str], tag: str = "td") -> str:
        return "<tr>" + "".join(f"<{tag}>{html.escape(x)}</{tag}>" for x in cells) + "</tr>"

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(g.study)}: timing x "
             f"weight</title><h1>Timing x weight: {html.escape(g.study)}</h1>"
             f"<p>{html.escape(_start_lines(g)[0])}</p><img alt='grid' "
             f"src='data:image/png;base64,{b64}'>"]  # fmt: skip
    for cand in dict.fromkeys(c.candidate for c in g.cells):
        head, rows = details(g, cand)
        parts += [f"<h2>{html.escape(cand)}</h2><table border=1>", tr(head, "th"),
                  *(tr(r) for r in rows), "</table>"]  # fmt: skip
    return "".join([*parts, f"<p>{html.escape(_DETAILS_NOTE)}</p>"])
