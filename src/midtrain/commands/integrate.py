"""`midtrain integrate propose|run|report`: integration rounds of a full midtraining mix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from midtrain.console import safe
from midtrain.errors import MidtrainError
from midtrain.integrate.guards import MIN_ANCHOR_SHARE

console = Console()
app = typer.Typer(
    help="Integration rounds: the winners plus an anchor as a full mix, round over round.",
    no_args_is_help=True,
)

ANCHOR_HELP = f"The anchor's share of the mix (at least {MIN_ANCHOR_SHARE:g} unless --no-anchor)."
NO_ANCHOR_HELP = f"Lift the minimum anchor share ({MIN_ANCHOR_SHARE:g}): any share, 0 included."
TOKENS_SCALE_HELP = (
    "Tokens per run as N x the study's (Olmo 3's integration tests: ~10x its microanneals); "
    "not with --tokens."
)


def _budgets(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        group, sep, value = item.partition("=")
        try:
            out[group.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not group.strip():
            raise MidtrainError(f"--budget {item!r}: write GROUP=SHARE, e.g. math+code=0.4")
    return out


@app.command("propose")
def propose_cmd(
    studies: Annotated[list[Path], typer.Argument(help="Finished study folders.")],
    out: Annotated[Path, typer.Option("--out", help="The round file to write (TOML).")],
    history: Annotated[
        Path | None,
        typer.Option(help="Round history: keep the last round's sources, beat its mix."),
    ] = None,
    anchor_share: Annotated[float, typer.Option(help=ANCHOR_HELP)] = 0.4,
    no_anchor: Annotated[bool, typer.Option("--no-anchor", help=NO_ANCHOR_HELP)] = False,
    budget: Annotated[
        list[str], typer.Option(help="Group budget GROUP=SHARE, e.g. math+code=0.4 (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default
    tokens: Annotated[
        int | None, typer.Option(help="Tokens per run (default: the study's).")
    ] = None,
    tokens_scale: Annotated[float | None, typer.Option(help=TOKENS_SCALE_HELP)] = None,
    ablate: Annotated[
        list[str], typer.Option(help="A source to leave out in an ablation arm (repeatable).")
    ] = [],  # noqa: B006
    name: Annotated[str | None, typer.Option(help="The round's name (default round-N).")] = None,
    merge_seeds: Annotated[bool, typer.Option(help="Merge the round's seeds.")] = False,
) -> None:
    """Draft the next round from finished studies; edit it, then `integrate run` it."""
    from midtrain.integrate.guards import describe
    from midtrain.integrate.propose import propose, write_round

    if out.exists() and out.is_dir():
        raise MidtrainError(
            f"--out {out} is a folder; pass the round file to write, e.g. round.toml"
        )
    rnd, notes = propose(
        studies, out=out, history=history, anchor_share=anchor_share, no_anchor=no_anchor,
        budgets=_budgets(budget), tokens=tokens, tokens_scale=tokens_scale, ablate=ablate,
        name=name, merge_seeds=merge_seeds,
    )  # fmt: skip
    auto = write_round(rnd, notes, studies, out)  # validated first
    console.print(f"round {safe(rnd['name'])}: anchor {rnd['anchor_share']:.0%} + "
                  + ", ".join(f"{safe(s)} {v:.1%}" for s, v in rnd["sources"].items()))  # fmt: skip
    for n in notes:
        console.print(f"  {safe(n)}")
    console.print(f"  automatic guards: {safe(describe(auto))}")
    console.print(
        f"wrote {safe(out)}; edit it, then `midtrain integrate run {safe(out)} --out HISTORY`"
    )


@app.command("run")
def run_cmd(
    round_file: Annotated[Path, typer.Argument(help="The round file (TOML).")],
    out: Annotated[Path, typer.Option("--out", help="The round history folder.")],
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Local executor: parallel run processes.")] = 1,
    address: Annotated[str | None, typer.Option(help="Ray cluster address.")] = None,
) -> None:
    """Train the round's mix (and ablations) against the previous mix; record it in the history."""
    from midtrain.commands.study import exit_on_failed_runs
    from midtrain.integrate.report import table, write
    from midtrain.integrate.run import run_round

    rec, results = run_round(round_file, out, executor=executor, workers=workers, address=address)
    rounds, md = write(out)
    console.print(table(rounds))
    console.print(
        f"rounds: {safe(md)}  ·  round report: {safe(Path(out) / rec.name / 'report.md')}"
    )
    exit_on_failed_runs(results, Path(out) / rec.name)


@app.command("report")
def report_cmd(
    history: Annotated[Path, typer.Argument(help="The round history folder.")],
) -> None:
    """The round-over-round table (also rounds.md and rounds.png in the folder)."""
    from midtrain.integrate.report import table, write

    rounds, md = write(history)
    console.print(table(rounds))
    console.print(f"wrote {safe(md)} and {safe(Path(history) / 'rounds.png')}")


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    root.add_typer(app, name="integrate")
