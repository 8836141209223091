"""Views of `midtrain similarity`: rich tables and PNG plots of its results (plain data)."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from midtrain.console import safe
from midtrain.similarity import Comparison, SimilaritySettings
from midtrain.unigram import SetSummary


def sets_table(sets: dict[str, SetSummary]) -> Table:
    t = Table(title="sets (documents sampled from each)")
    for col in ("set", "docs", "of", "tokens", "types", "path"):
        t.add_column(col, justify="left" if col in ("set", "path") else "right")
    for name, s in sets.items():
        t.add_row(safe(name), f"{s['docs']:,}", f"{s['available_docs']:,}", f"{s['tokens']:,}",
                  f"{s['types']:,}", safe(s["where"]))  # fmt: skip
    return t


def settings_line(result: Comparison) -> str:
    st = result["settings"]
    return (f"score = 0.4 cosine + 0.3 Jaccard + 0.3 / (1 + JS) on the top {st['top_k']:,} types; "
            f"{st['docs']:,} docs per set, seed {st['seed']}; {mode_text(st)}")  # fmt: skip


def mode_text(settings: SimilaritySettings) -> str:
    """`mode paper (JS in nats)`: the mode of a result's settings (results without one: default)."""
    from midtrain.unigram import DEFAULT, get_mode

    mode = get_mode(settings.get("mode", DEFAULT))
    return f"mode {mode.name} (JS in {mode.js_unit})"


def matrix_table(result: Comparison) -> Table:
    t = Table(title="score (JS divergence)")
    targets = list(next(iter(result["matrix"].values())))
    t.add_column("source \\ target")
    for name in targets:
        t.add_column(safe(name), justify="right")
    for src, row in result["matrix"].items():
        t.add_row(safe(src), *(f"{row[n]['score']:.3f} ({row[n]['js']:.3f})" for n in targets))
    return t


def proximity_view(result: Comparison) -> Table:
    t = Table(title=f"proximity advantage: sim(mix, target) - sim(base, target); base = "
              f"{safe(result['base'])}")  # fmt: skip
    targets = list(next(iter(result["proximity"].values()))["targets"])
    t.add_column("mix")
    for name in targets:
        t.add_column(safe(name), justify="right")
    for name, p in result["proximity"].items():
        cells = p["targets"]
        t.add_row(safe(name), *(f"{cells[n]['advantage']:+.4f} ({cells[n]['mix_score']:.3f} vs "
                                f"{cells[n]['base_score']:.3f})" for n in targets))  # fmt: skip
    return t


def heatmap(result: Comparison) -> bytes:
    """Sources x targets, coloured by the score, each cell labelled with the score and JS."""
    from midtrain.report.plots import figure, label, png

    rows = list(result["matrix"])
    cols = list(result["matrix"][rows[0]])
    score = [[result["matrix"][r][c]["score"] for c in cols] for r in rows]
    with figure(figsize=(1.6 + 1.3 * len(cols), 1.0 + 0.6 * len(rows))) as (fig, ax):
        im = ax.imshow(score, cmap="viridis", vmin=0.15, vmax=1.0, aspect="auto")
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                cell = result["matrix"][r][c]
                ax.text(j, i, f"{cell['score']:.3f}\nJS {cell['js']:.3f}", ha="center",
                        va="center", fontsize=8, color="white" if cell["score"] < 0.6 else "black")  # fmt: skip
        ax.set_xticks(range(len(cols)), [label(c, 20) for c in cols], rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), [label(r, 20) for r in rows])
        ax.set_xlabel("target")
        ax.set_ylabel("source")
        ax.set_title("token-unigram similarity (0.15 = disjoint, 1 = identical)")
        fig.colorbar(im, ax=ax)
        return png(fig)


def _num(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _ci(ci: list[float] | None) -> str:
    return "-" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def p_text(p: float | None) -> str:
    """A p-value as printed: never 0 (a permutation p is at least 1 / its orders)."""
    return "-" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _corr_ci(c: Any, ci: list[float] | None) -> str:
    from midtrain.stats.proximity import MIN_INTERVAL_ARMS

    if ci is None and c.pearson is not None and c.n_arms < MIN_INTERVAL_ARMS:
        return "too few arms"
    return _ci(ci)


def correlation_caption(table: Any) -> str:
    """How the p-values and intervals were made, and why any is missing."""
    from midtrain.stats.proximity import MIN_BOOTSTRAP_ARMS, MIN_INTERVAL_ARMS

    lines = [f"p: two-sided permutation test over arms; CI: none below {MIN_INTERVAL_ARMS} arms, "
             f"Fisher z (approximate) below {MIN_BOOTSTRAP_ARMS}, bootstrap over arms from "
             f"{MIN_BOOTSTRAP_ARMS}", *table.correlation_notes()]  # fmt: skip
    return "\n".join(safe(line) for line in lines)


def study_tables(table: Any) -> list[Table]:
    """A study's proximity table (`stats.proximity.ProximityTable`): per arm and set, then the
    correlation of proximity advantage with SFT gain."""
    st = table.settings
    rows = Table(title=f"study {safe(table.study)}: proximity advantage vs SFT gain (top "
                 f"{st['top_k']:,} types, {st['docs']:,} docs, seed {st['seed']}, "
                 f"{mode_text(st)})")  # fmt: skip
    for col in ("arm", "set", "sim(arm)", "sim(base)", "advantage", "SFT gain", "gain CI"):
        rows.add_column(col, justify="left" if col in ("arm", "set") else "right")
    for r in table.rows:
        rows.add_row(safe(r.arm), safe(r.set), f"{r.similarity:.4f}", f"{r.base_similarity:.4f}",
                     f"{r.advantage:+.4f}", _num(r.sft_gain, "+.4f"), _ci(r.sft_gain_ci))  # fmt: skip
    corr = Table(title="correlation over arms (SFT gain = minus Δ SFT val loss vs control, "
                 "nats/token)", caption=correlation_caption(table))  # fmt: skip
    for col in ("scope", "arms", "points", "Pearson r", "p", "CI", "Spearman ρ", "p ", "CI "):
        corr.add_column(col, justify="left" if col == "scope" else "right")
    for c in table.correlations:
        corr.add_row(safe(c.scope), str(c.n_arms), str(c.n_points), _num(c.pearson, "+.3f"),
                     p_text(c.pearson_p), _corr_ci(c, c.pearson_ci), _num(c.spearman, "+.3f"),
                     p_text(c.spearman_p), _corr_ci(c, c.spearman_ci))  # fmt: skip
    return [rows, corr]


def scatter(table: Any) -> bytes:
    """Proximity advantage (x) vs SFT gain (y), one colour per SFT set, arms labelled."""
    from midtrain.report.plots import figure, label, png

    with figure(figsize=(7, 5)) as (fig, ax):
        for s in table.sets:
            pts = [r for r in table.rows if r.set == s and r.sft_gain is not None]
            ax.scatter([r.advantage for r in pts], [r.sft_gain for r in pts], label=label(s, 20))
            for r in pts:
                ax.annotate(label(r.arm, 16), (r.advantage, r.sft_gain), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("proximity advantage: sim(arm mix, SFT set) - sim(base mix, SFT set)")
        ax.set_ylabel("SFT gain: control - arm SFT val loss (nats/token)")
        pooled = table.correlations[0]
        r = "undefined" if pooled.pearson is None else f"{pooled.pearson:+.2f}"
        ax.set_title(f"{label(table.study, 30)}: Pearson r = {r} over {pooled.n_arms} arms")
        ax.legend(title="SFT set", fontsize=8)
        return png(fig)
