"""`midtrain optimize`: fit metric responses to mixture weights and propose the next round's mix."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from midtrain.commands.integrate import TOKENS_SCALE_HELP
from midtrain.console import safe
from midtrain.errors import MidtrainError
from midtrain.integrate.guards import MIN_ANCHOR_SHARE

console = Console()


def optimize_cmd(
    studies: Annotated[list[Path], typer.Argument(help="Finished study folders.")],
    out: Annotated[Path, typer.Option("--out", help="The round file to write (TOML).")],
    history: Annotated[
        Path | None,
        typer.Option(
            help="Round history: its rounds are points too; the last round's mix is "
            "the current mix."
        ),  # fmt: skip
    ] = None,
    budget: Annotated[
        list[str], typer.Option(help="Group budget GROUP=SHARE, e.g. math+code=0.4 (repeatable).")
    ] = [],  # noqa: B006 - typer reads the default
    kl: Annotated[
        float, typer.Option(help="KL penalty to the current mix (measured spreads per nat).")
    ] = 0.1,
    tokens: Annotated[
        int | None, typer.Option(help="Tokens per run of the round (default: the study's).")
    ] = None,
    tokens_scale: Annotated[float | None, typer.Option(help=TOKENS_SCALE_HELP)] = None,
    no_anchor: Annotated[
        bool,
        typer.Option(
            "--no-anchor",
            help=f"Lift the minimum anchor share ({MIN_ANCHOR_SHARE:g}) on the solved mix: any "
            "anchor share, 0 included.",
        ),
    ] = False,
    model: Annotated[str, typer.Option(help="loglinear (the mixing law) or gbm.")] = "loglinear",
    as_json: Annotated[bool, typer.Option("--json", help="Print the proposal as JSON.")] = False,
) -> None:
    """Propose the next mix from finished studies (and rounds); write it as a round file."""
    from midtrain.commands.integrate import _budgets
    from midtrain.integrate.propose import write_round
    from midtrain.optimize.proposal import optimize
    from midtrain.optimize.report import lines, metric_table, mix_table, round_head, to_json

    if out.exists() and out.is_dir():
        raise MidtrainError(
            f"--out {out} is a folder; pass the round file to write, e.g. round.toml"
        )
    prop = optimize(studies, out=out, history=history, budgets=_budgets(budget), kl=kl,
                    tokens=tokens, tokens_scale=tokens_scale, no_anchor=no_anchor,
                    model=model)  # fmt: skip
    write_round(prop.round, [], studies, out, head=round_head(prop, studies, history))
    if as_json:
        typer.echo(json.dumps(to_json(prop), indent=2))
        return
    console.print(mix_table(prop))
    console.print(metric_table(prop))
    for line in lines(prop):
        console.print(safe(line))
    console.print(f"wrote {safe(out)}; then `midtrain integrate run {safe(out)} --out HISTORY`")


def register(root: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    root.command("optimize")(optimize_cmd)
