"""The study report: results.json, report.md, a self-contained report.html and PNG plots.

Paths in the report are relative to the study folder (the report can move with it).

Everything is written atomically; data text (names, task ids, reasons) is escaped: in the HTML by
jinja2's autoescape, in Markdown by the `md` filter, in the terminal by `console.safe`.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from rich.table import Table

from midtrain.console import safe
from midtrain.io import atomic_write_bytes, atomic_write_text
from midtrain.mix.spec import MixComponent
from midtrain.report import plots
from midtrain.study.config import StudyConfig
from midtrain.study.results import StudyResult


def fmt(x: float | None, digits: int = 3) -> str:
    if not isinstance(x, (int, float)):
        return "–"
    return f"{x:+.{digits}f}"


def fmt_ci(ci: list[float] | None, digits: int = 3) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or any(c != c for c in ci):
        return "–"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def num(x: float | None, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, (int, float)) else "–"


def fmt_p(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def method_text(r: StudyResult) -> str:
    """One paragraph saying how the intervals and verdicts were made."""
    m = r.method
    if m is None:
        return ""
    text = (
        f"Intervals: {m.confidence * 100:.4g}% t-intervals with the training run as the unit of "
        "replication: each arm's variance comes from its paired differences with the control "
        "(seed by seed), pooled over the arms of its design (same fraction, or @cpt), plus the "
        "effect's example-to-example variation "
        '(docs/studies.md, "How the intervals are made").'
    )
    if m.paired_streams:
        text += " Arms share their control's data stream (paired_streams: common random numbers)."
    if m.primary_score == "standardized":
        text += " The primary weights each task by 1 / its run-to-run sd (standardized)."
    if m.correction != "none":
        name = {"holm": "Holm (family-wise)", "bh": "Benjamini-Hochberg (false discovery)"}
        text += (f" Verdicts use {name[m.correction]}-adjusted p-values over every arm and "
                 "guard (p adj).")  # fmt: skip
    else:
        text += (" No multiple-testing correction (correction = \"none\"): with many arms, "
                 "some include or reject verdicts are expected by chance.")  # fmt: skip
    if m.changed_after_results:
        text += (f" ANALYSIS CHANGED AFTER RESULTS (--reanalyze): {', '.join(m.changed_after_results)} "
                 "differ from the plan registered before the first run (study.json).")  # fmt: skip
    if m.looks > 1 or m.confidence < r.confidence - 1e-12:
        text += (
            f" Seeds were added to inconclusive arms after each analysis ({m.looks} so far); "
            "alpha is spent over the analyses (O'Brien-Fleming-type boundaries), and each arm's "
            "delta is also given bias-adjusted for where it stopped."
        )
    return text


def mix_label(mix: list[MixComponent]) -> str:
    return " / ".join(f"{m.source} {m.ratio:.0%}" for m in mix)


def verdict_rows(r: StudyResult) -> list[dict[str, str]]:
    """One row of display strings per arm (shared by the terminal, Markdown and HTML tables)."""
    rows = []
    for arm in r.arms:
        p = arm.primary
        tasks_primary = arm.base_primary if arm.decided_on == "sft" else p
        # Δ acc over the tasks' primary's tasks
        in_primary = set(tasks_primary.tasks) if tasks_primary else set(arm.tasks)
        acc = [
            t.acc_delta for n, t in arm.tasks.items() if n in in_primary and t.acc_delta is not None
        ]
        if tasks_primary and tasks_primary.score_delta is not None:  # accuracy / exact match
            acc = [tasks_primary.score_delta]
        flags = [f"task-regression ({', '.join(arm.regressed_tasks)})" if f == "task-regression"
                 else f for f in arm.flags]  # fmt: skip
        rows.append(
            {
                "arm": arm.arm,
                "mix": mix_label(arm.mix),
                "seeds": str(len(arm.seeds)),
                "verdict": arm.verdict,
                "delta": fmt(p.delta if p else None),
                "ci": fmt_ci(p.ci if p else None),
                "p": fmt_p(p.p if p else None),
                "p_adj": fmt_p(p.p_adjusted if p else None),
                "acc": fmt(sum(acc) / len(acc)) if acc else "–",
                "flags": ", ".join(flags) or "–",
                "reason": arm.reason,
                "adjusted": fmt(p.delta_adjusted) if p and p.delta_adjusted is not None else "",
                "suggestion": arm.suggestion or "",
            }
        )
    return rows


def probe_rows(r: StudyResult) -> list[dict[str, str]]:
    """The SFT probe: one row of display strings per arm and set."""
    rows = []
    for arm in r.arms:
        for name, s in (arm.probe.sets if arm.probe else {}).items():
            f, c = s.forgetting, s.forgetting_change
            rows.append({
                "arm": arm.arm, "set": name, "delta": fmt(s.delta_val_loss), "ci": fmt_ci(s.ci),
                "forget": fmt(f.delta_bpb if f else None, 4), "forget_ci": fmt_ci(f.ci if f else None, 4),
                "change": fmt(c.delta_bpb if c else None, 4), "change_ci": fmt_ci(c.ci if c else None, 4),
                "seeds": str(len(s.val_loss)),
            })  # fmt: skip
    return rows


def score_rows(r: StudyResult) -> list[dict[str, str]]:
    """Both scores of every arm: the SFT score and the tasks' primary, and which one decides."""
    rows = []
    for arm in r.arms:
        sft = arm.probe.primary if arm.probe else None
        base = arm.base_primary if arm.decided_on == "sft" else arm.primary
        rows.append({
            "arm": arm.arm, "decides": arm.decided_on, "verdict": arm.verdict,
            "sft": fmt(sft.delta if sft else None), "sft_ci": fmt_ci(sft.ci if sft else None),
            "sft_p": fmt_p(sft.p if sft else None),
            "base": fmt(base.delta if base else None), "base_ci": fmt_ci(base.ci if base else None),
        })  # fmt: skip
    return rows


def versus_rows(r: StudyResult) -> list[dict[str, str]]:
    """Midtraining minus continued pretraining: one row of display strings per mixed arm."""
    rows = []
    for v in r.versus_cpt:
        row = {"arm": v.arm, "cpt": v.cpt_arm}
        for key, est, digits in (("primary", v.primary, 3), ("sft", v.sft, 3),
                                 ("forget", v.forgetting, 4)):  # fmt: skip
            row[key] = fmt(est.delta if est else None, digits)
            row[f"{key}_ci"] = fmt_ci(est.ci if est else None, digits)
            row[f"{key}_p"] = fmt_p(est.p if est else None)
        row["seeds"] = str(v.primary.seeds if v.primary else v.sft.seeds if v.sft else 0)
        rows.append(row)
    return rows


def trajectory_rows(r: StudyResult) -> list[dict[str, str]]:
    """Per arm: Δ primary with its interval at each eval point, the change over the last two,
    and whether it is still moving."""
    rows = []
    for a in r.arms:
        t = a.trajectory
        if t is None:
            continue
        pts = [f"{fmt(p.primary.delta)} {fmt_ci(p.primary.ci)}" if p.primary else "–"
               for p in t.points]  # fmt: skip
        rows.append({
            "arm": a.arm, "verdict": a.verdict, "points": pts,
            "change": f"{fmt(t.change.delta)} {fmt_ci(t.change.ci)}" if t.change else "–",
            "moving": ("yes: " + t.why_moving) if t.still_moving else
                      ("no" if t.still_moving is False else "–"),
        })  # fmt: skip
    return rows


def eval_share_text(r: StudyResult) -> str | None:
    """The share of the study's training and evaluation time spent evaluating."""
    t = r.trajectories
    if t is None or t.eval_share is None:
        return None
    return (f"Evaluation took {t.eval_seconds:.0f} s of {t.eval_seconds + t.train_seconds:.0f} s "
            f"of training and evaluation ({t.eval_share:.0%}; {len(t.fractions)} eval point(s) "
            "per run plus the start checkpoint; SFT probes not counted)")  # fmt: skip


def verdict_table(r: StudyResult) -> Table:
    metric = f"mean {r.eval.primary_metric}"
    if any(a.decided_on == "sft" for a in r.arms):
        metric = "SFT score (control − arm SFT val loss, mean over sets)"
    t = Table(title=f"study {safe(r.study)}: arm − control, primary = {metric}")
    cols = (
        "arm",
        "mix",
        "seeds",
        "verdict",
        "Δ primary",
        f"{r.confidence * 100:.4g}% CI",
        "p",
        "p adj",
        "Δ acc",
        "flags",
    )
    for col in cols:
        t.add_column(col)
    style = {"include": "green", "reject": "red", "inconclusive": "yellow"}
    for row in verdict_rows(r):
        v = f"[{style.get(row['verdict'], 'white')}]{row['verdict']}[/]"
        cells = (row["arm"], row["mix"], row["seeds"], v, row["delta"], row["ci"], row["p"],
                 row["p_adj"], row["acc"], row["flags"])  # fmt: skip
        t.add_row(*(c if c is v else safe(c) for c in cells))
    return t


def lr_edge_note(r: StudyResult) -> str | None:
    """How many SFT probes chose the lowest or highest LR of the grid (the best LR may lie
    beyond it), or None."""
    lrs = sorted(set(r.probe.lrs)) if r.probe is not None else []
    if len(lrs) < 2:
        return None
    probes = [p for a in r.arms if a.probe for p in a.probe.runs] + r.probe.runs
    chosen = [p.chosen_lr for p in probes if p.chosen_lr is not None]
    low, high = chosen.count(lrs[0]), chosen.count(lrs[-1])
    if not low + high:
        return None
    return (
        f"the chosen SFT LR is at the edge of the grid in {low + high} of {len(chosen)} probes "
        f"({low} at the lowest, {lrs[0]:g}; {high} at the highest, {lrs[-1]:g}); the best LR may "
        "lie beyond it: extend sft_probe.lrs"
    )


def md_escape(text: object) -> str:
    """Escape data text for a Markdown table cell (no raw HTML, no stray column breaks)."""
    out = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    out = out.replace("\\", "\\\\")
    for ch in "|*_`[]#":
        out = out.replace(ch, "\\" + ch)
    return " ".join(out.splitlines())


def _env(out: Path | None = None) -> Environment:
    env = Environment(
        loader=PackageLoader("midtrain", "report/templates"),
        autoescape=select_autoescape(["html", "html.j2"], default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_escape
    env.filters["rel"] = lambda p: os.path.relpath(p, out) if out is not None else p
    return env


def write_report(r: StudyResult, cfg: StudyConfig, out: Path) -> dict[str, Path]:
    """Write results.json, plots/*.png, report.md and report.html into `out` (each atomically)."""
    out = Path(out)
    r.save(out / "results.json")
    images = {
        "deltas": plots.plot_deltas(r),
        "loss": plots.plot_loss(r, out),
        "domains": plots.plot_domains(r),
    }
    if (traj := plots.plot_trajectories(r)) is not None:
        images["trajectories"] = traj
    for name, data in images.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", data)
    proximity, proximity_error = _proximity(r, cfg, out)
    ctx = {
        "proximity": proximity,
        "proximity_error": proximity_error,
        "r": r,
        "cfg": cfg,
        "rows": verdict_rows(r),
        "left_out": [s for s in r.screen if not s.in_primary],
        "probe_rows": probe_rows(r),
        "score_rows": score_rows(r),
        "versus_rows": versus_rows(r),
        "trajectory_rows": trajectory_rows(r),
        "eval_share": eval_share_text(r),
        "decided_on_sft": any(a.decided_on == "sft" for a in r.arms),
        "fmt": fmt,
        "fmt_ci": fmt_ci,
        "num": num,
        "method_text": method_text(r),
        "mix_label": mix_label,
        "images": {k: base64.b64encode(v).decode() for k, v in images.items()},
        "lr_edge": lr_edge_note(r),
    }
    env = _env(out.resolve())
    atomic_write_text(out / "report.md", env.get_template("report.md.j2").render(**ctx))
    atomic_write_text(out / "report.html", env.get_template("report.html.j2").render(**ctx))
    return {"results": out / "results.json", "md": out / "report.md", "html": out / "report.html"}


def _proximity(r: StudyResult, cfg: StudyConfig, out: Path) -> tuple[Any, str | None]:
    """With an SFT probe: each arm's token-unigram proximity advantage to each SFT set against its
    SFT gain (docs/similarity.md), also written to proximity.json. A failure is reported, not raised."""
    if cfg.sft_probe is None or r.probe is None or not r.arms:
        return None, None
    from midtrain.errors import MidtrainError
    from midtrain.stats.proximity import proximity_table

    try:
        table = proximity_table(r, config=cfg)
    except (MidtrainError, OSError, ValueError) as e:
        return None, str(e)
    atomic_write_text(out / "proximity.json", json.dumps(table.to_dict(), indent=2))
    return table, None
