"""`midtrain config docs`: write the config reference (docs/config.md) from the schema."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from midtrain.errors import MidtrainError


def config_docs(
    out: Annotated[Path, typer.Option("--out", help="Where to write the page.")] = Path(
        "docs/config.md"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Only compare with OUT; exit 1 when it is stale.")
    ] = False,
) -> None:
    """Generate the reference of every run-config and study-file field."""
    from midtrain.configdoc import render
    from midtrain.io import atomic_write_text

    text = render()
    if check:
        if not out.is_file() or out.read_text(encoding="utf-8") != text:
            typer.echo(f"{out} is stale; run `midtrain config docs --out {out}`", err=True)
            raise typer.Exit(1)
        return
    if out.exists() and not out.is_file():
        raise MidtrainError(f"--out {out} is not a file; pass a file path")
    atomic_write_text(out, text)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["config"].command("docs")(config_docs)
