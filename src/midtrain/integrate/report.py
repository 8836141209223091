"""The round-over-round table of a history folder: terminal, rounds.md, rounds.png.

Each row is one round against the mix before it (the previous round, or the base mix for round 1),
trained alike in the same round: the paired delta is the round's own study contrast. Ablation
rows give what each left-out source added inside the round's mix.
"""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from midtrain.errors import MidtrainError
from midtrain.integrate.run import RECORD, RoundResult
from midtrain.io import atomic_write_bytes, atomic_write_text
from midtrain.report.render import fmt, fmt_ci, md_escape, num


def load_history(history: str | Path) -> list[RoundResult]:
    """Every finished round in the folder, by round number then name."""
    history = Path(history)
    if not history.is_dir():
        raise MidtrainError(f"{history}: not a folder; pass the --out folder of `integrate run`")
    rounds = [RoundResult.load(p) for p in sorted(history.glob(f"*/{RECORD}"))]
    if not rounds:
        raise MidtrainError(f"{history}: no round.json in its subfolders; run "
                            "`midtrain integrate run ROUND.toml --out` into it first")  # fmt: skip
    return sorted(rounds, key=lambda r: (r.round, r.name))


def mix_text(mix: dict[str, float]) -> str:
    return " / ".join(f"{s} {v:.0%}" for s, v in sorted(mix.items(), key=lambda kv: -kv[1]))


def _cols(rounds: list[RoundResult]) -> tuple[list[str], list[str], list[str]]:
    tasks = sorted({t for r in rounds for t in r.tasks})
    domains = sorted({d for r in rounds for d in r.domains})
    sets = sorted({s for r in rounds for s in r.sft})
    return tasks, domains, sets


def rows(rounds: list[RoundResult], domains: bool = True) -> tuple[list[str], list[list[str]]]:
    """The table's header and rows (rounds, each followed by its ablations and merge)."""
    tasks, all_domains, sets = _cols(rounds)
    domains = all_domains if domains else []
    head = ["round", "mix", "vs", "score", "Δ primary", "CI", "verdict"]
    head += [f"Δ {t}" for t in tasks] + [f"Δ bpb {d}" for d in domains]
    head += [f"Δ SFT loss {s}" for s in sets]
    out = []
    for r in rounds:
        p = r.primary
        vs = (
            f"{r.previous_name} ({num(r.previous_score)})"
            if r.previous_score is not None
            else r.previous_name
        )
        row = [r.name, mix_text(r.mix), vs, num(r.round_score),
               fmt(p.delta if p else None), fmt_ci(p.ci if p else None), r.verdict]  # fmt: skip
        row += [fmt(r.tasks[t].delta) if t in r.tasks else "–" for t in tasks]
        row += [fmt(r.domains[d].delta) if d in r.domains else "–" for d in domains]
        row += [fmt(r.sft[s].delta_val_loss) if s in r.sft else "–" for s in sets]
        out.append(row)
        blank = [""] * (len(head) - 7)
        for a in r.ablations:
            out.append([f"  − {a.source}", f"its {a.share:.0%} to the anchor", r.name, "",
                        fmt(a.contribution), fmt_ci(a.ci), "contribution", *blank])  # fmt: skip
        if r.merge is not None and r.merge.status == "done":
            out.append([f"  merge of {len(r.merge.seeds)} seeds", "", "seeds' mean",
                        num(r.merge.merge_score), fmt(r.merge.delta), fmt_ci(r.merge.ci),
                        "merge", *blank])  # fmt: skip
    return head, out


def table(rounds: list[RoundResult]) -> Table:
    head, body = rows(rounds, domains=False)  # the terminal: tasks and SFT; rounds.md has all
    t = Table(title=f"integration rounds: round − the mix before it ({rounds[0].metric})")
    for h in head:
        t.add_column(h)
    for row in body:
        t.add_row(*row)
    return t


def markdown(rounds: list[RoundResult]) -> str:
    head, body = rows(rounds)
    lines = [
        "# Integration rounds", "",
        f"Each round against the mix before it, trained alike in the same round (primary: "
        f"{md_escape(rounds[0].metric)}, higher is better; bpb lower is better; SFT loss lower is "
        "better). Ablation rows: the round minus the round without that source (same tokens). "
        "Merge rows: the merge of the round's seeds minus their mean.", "",
        "| " + " | ".join(md_escape(h) for h in head) + " |",
        "|" + "---|" * len(head),
    ]  # fmt: skip
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in body]
    lines += [""] + [f"- **{md_escape(r.name)}**: {md_escape(r.verdict)}: {md_escape(r.reason)} "
                     f"(report: {md_escape(r.name)}/report.md)" for r in rounds]  # fmt: skip
    lines += ["", "![rounds](rounds.png)", ""]
    return "\n".join(lines)


def plot(rounds: list[RoundResult]) -> bytes:
    """The primary score of each round and of the mix it beat, with the delta's interval."""
    from midtrain.report.plots import figure, png

    with figure(figsize=(2 + 1.6 * len(rounds), 3.6)) as (fig, ax):
        xs = range(len(rounds))
        for x, r in zip(xs, rounds, strict=True):
            if r.previous_score is not None:
                ax.plot([x - 0.25], [r.previous_score], "o", color="grey")
            if r.round_score is not None and r.primary is not None and r.previous_score is not None:
                lo, hi = (r.previous_score + c for c in r.primary.ci)
                ax.errorbar([x + 0.05], [r.round_score], yerr=[[r.round_score - lo], [hi - r.round_score]],
                            fmt="o", color="C0", capsize=4)  # fmt: skip
            for a in r.ablations:
                if r.round_score is not None and a.contribution is not None:
                    ax.plot([x + 0.15], [r.round_score - a.contribution], "x", color="C1")
            if r.merge is not None and r.merge.merge_score is not None:
                ax.plot([x + 0.3], [r.merge.merge_score], "D", color="C2")
        ax.set_xticks(list(xs), [r.name for r in rounds])
        ax.set_ylabel(rounds[0].metric)
        ax.set_title(
            "grey: mix before · blue: round (CI of Δ) · orange: ablations · green: merge",
            fontsize=9,
        )
        return png(fig)


def write(history: str | Path) -> tuple[list[RoundResult], Path]:
    rounds = load_history(history)
    history = Path(history)
    atomic_write_bytes(history / "rounds.png", plot(rounds))
    md = atomic_write_text(history / "rounds.md", markdown(rounds))
    return rounds, md
