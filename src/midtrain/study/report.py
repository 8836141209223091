"""The study report: results.json, report.md, a self-contained report.html and PNG plots.

Everything is written atomically; data text (names, task ids, reasons) is escaped in the HTML by
jinja2's autoescape.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from rich.table import Table

from midtrain.io import atomic_write_bytes, atomic_write_json, atomic_write_text


def fmt(x: float | None, digits: int = 3) -> str:
    if not isinstance(x, (int, float)):
        return "–"
    return f"{x:+.{digits}f}"


def fmt_ci(ci: list[float] | None, digits: int = 3) -> str:
    if not isinstance(ci, (list, tuple)) or len(ci) != 2:
        return "–"
    return f"[{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def mix_label(mix: list[dict[str, Any]]) -> str:
    return " / ".join(f"{m['source']} {m['ratio']:.0%}" for m in mix)


def verdict_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for arm in results["arms"]:
        p = arm.get("primary") or {}
        tasks = arm.get("tasks", {})
        acc = [t["acc_delta"] for t in tasks.values() if "acc_delta" in t]
        rows.append(
            {
                "arm": arm["arm"],
                "mix": mix_label(arm["mix"]),
                "verdict": arm["verdict"],
                "delta": fmt(p.get("delta")),
                "ci": fmt_ci(p.get("ci")),
                "acc": fmt(sum(acc) / len(acc)) if acc else "–",
                "flags": ", ".join(arm.get("flags", [])) or "–",
                "reason": arm.get("reason", ""),
                "suggestion": arm.get("suggestion", ""),
            }
        )
    return rows


def verdict_table(results: dict[str, Any]) -> Table:
    metric = results["eval"]["primary_metric"]
    t = Table(title=f"study {results['study']}: arm − control, primary = mean {metric}")
    for col in (
        "arm",
        "mix",
        "verdict",
        "Δ primary",
        f"{results['confidence']:.0%} CI",
        "Δ acc",
        "flags",
    ):
        t.add_column(col)
    style = {"include": "green", "reject": "red", "inconclusive": "yellow"}
    for r in verdict_rows(results):
        v = f"[{style.get(r['verdict'], 'white')}]{r['verdict']}[/]"
        t.add_row(r["arm"], r["mix"], v, r["delta"], r["ci"], r["acc"], r["flags"])
    return t


# ----------------------------------------------------------------------------- plots
def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_deltas(results: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = results["arms"]
    tasks = results["eval"]["tasks"]
    domains = results["eval"]["domains"]
    fig, axes = plt.subplots(
        1, 2, figsize=(12, 0.5 + 0.45 * max(1, len(arms)) * max(1, len(tasks) + 1))
    )
    for ax, keys, field, title in (
        (axes[0], ["primary"] + tasks, "delta", f"task Δ ({results['eval']['primary_metric']})"),
        (axes[1], domains, "delta_bpb", "domain Δ bits-per-byte (lower is better)"),
    ):
        labels, vals, lo, hi = [], [], [], []
        for arm in arms:
            for k in keys:
                rec = (
                    arm.get("primary")
                    if k == "primary"
                    else (arm.get("tasks", {}) | arm.get("domains", {})).get(k)
                )
                if not rec:
                    continue
                labels.append(f"{arm['arm']} · {k}")
                vals.append(rec[field])
                lo.append(rec[field] - rec["ci"][0])
                hi.append(rec["ci"][1] - rec[field])
        y = list(range(len(labels)))[::-1]
        ax.errorbar(vals, y, xerr=[lo, hi], fmt="o", capsize=3)
        ax.axvline(0, color="grey", lw=1)
        ax.set_yticks(y, labels, fontsize=8)
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def plot_loss(results: dict[str, Any], out: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    runs = results["control"]["runs"] + [r for a in results["arms"] for r in a["runs"]]
    colors: dict[str, Any] = {}
    first_seed = min((r["seed"] for r in runs), default=0)
    for r in runs:
        log = out / r["dir"] / "log.jsonl"
        if not log.is_file():
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        rows = [x for x in rows if "loss" in x]
        if not rows:
            continue
        c = colors.setdefault(r["arm"], f"C{len(colors) % 10}")
        ax.plot(
            [x["tokens"] for x in rows],
            [x["loss"] for x in rows],
            color=c,
            lw=1,
            ls="-" if r["seed"] == first_seed else "--",
            label=r["arm"] if r["arm"] not in [h.get_label() for h in ax.lines] else None,
        )
    ax.set_xlabel("tokens")
    ax.set_ylabel("training loss (on each run's own mix)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def plot_domains(results: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    domains = results["eval"]["domains"]
    ctrl = results["control"]["domains"]
    series = [("control", [float(np.mean(ctrl.get(d) or [np.nan])) for d in domains])]
    for arm in results["arms"]:
        deltas = [arm.get("domains", {}).get(d, {}).get("delta_bpb", np.nan) for d in domains]
        series.append((arm["arm"], [c + dl for c, dl in zip(series[0][1], deltas, strict=True)]))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(domains)), 4))
    w = 0.8 / len(series)
    x = np.arange(len(domains))
    for i, (name, vals) in enumerate(series):
        ax.bar(x + i * w, vals, w, label=name)
    ax.set_xticks(x + 0.4 - w / 2, domains)
    ax.set_ylabel("held-out bits per byte (mean over docs and seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


# ----------------------------------------------------------------------------- documents
def md_escape(text: object) -> str:
    """Escape data text for a Markdown table cell (no raw HTML, no stray column breaks)."""
    return str(text).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _env() -> Environment:
    env = Environment(
        loader=PackageLoader("midtrain", "templates"),
        autoescape=select_autoescape(["html", "html.j2"], default_for_string=False, default=False),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["md"] = md_escape
    return env


def write_report(results: dict[str, Any], plan, out: Path) -> dict[str, Path]:
    """Write results.json, plots/*.png, report.md and report.html into `out` (each atomically)."""
    out = Path(out)
    atomic_write_json(out / "results.json", results)
    plots = {
        "deltas": plot_deltas(results),
        "loss": plot_loss(results, out),
        "domains": plot_domains(results),
    }
    for name, data in plots.items():
        atomic_write_bytes(out / "plots" / f"{name}.png", data)
    ctx = {
        "r": results,
        "cfg": plan.config,
        "rows": verdict_rows(results),
        "fmt": fmt,
        "fmt_ci": fmt_ci,
        "mix_label": mix_label,
        "images": {k: base64.b64encode(v).decode() for k, v in plots.items()},
    }
    env = _env()
    atomic_write_text(out / "report.md", env.get_template("report.md.j2").render(**ctx))
    atomic_write_text(out / "report.html", env.get_template("report.html.j2").render(**ctx))
    return {"results": out / "results.json", "md": out / "report.md", "html": out / "report.html"}
