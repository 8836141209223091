"""`midtrain study export`: a study's runs in Megatron-LM, OLMo-core or JSON terms.

See docs/external.md (Exports)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from midtrain.errors import MidtrainError

FORMATS = ("megatron", "olmo-core", "json")


def study_export(
    study: Annotated[Path, typer.Argument(help="A study TOML file (planned) or a study folder.")],
    fmt: Annotated[str, typer.Option("--format", help="megatron, olmo-core or json.")] = "json",
    out: Annotated[
        Path | None, typer.Option("--out", help="Write to this file (default: stdout).")
    ] = None,
) -> None:
    """Every run's mix (token shares) and schedule, in another trainer's own syntax."""
    from midtrain.io import atomic_write_text
    from midtrain.study.export import load_runs, render

    if fmt not in FORMATS:
        raise MidtrainError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    if out is not None and out.is_dir():
        raise MidtrainError(f"--out {out} is a folder; pass a file name, e.g. {out / 'mix.txt'}")
    _, runs = load_runs(study)
    text = render(runs, fmt, str(study))
    if out is None:
        sys.stdout.write(text)
        return
    atomic_write_text(out, text)
    print(f"{len(runs)} runs exported ({fmt}): {out}", file=sys.stderr)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the app (see midtrain/cli.py)."""
    groups["study"].command("export")(study_export)
