"""`midtrain study import`: runs made elsewhere (HF checkpoints, lm-eval sample logs) decided as
a study. See docs/external.md (Importing runs made elsewhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def study_import(
    runs: Annotated[
        Path, typer.Argument(help="A study TOML file plus its import table (docs/external.md).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Study directory (created; reused).")],
) -> None:
    """Decide runs made elsewhere: the study's verdicts, results.json and report from imported
    checkpoints or lm-eval --log_samples files."""
    from midtrain.commands.study import console, exit_on_failed_runs
    from midtrain.console import safe
    from midtrain.driver.importer import import_study
    from midtrain.report import verdict_table

    results = import_study(runs, out)
    console.print(verdict_table(results))
    for note in results.imported.notes if results.imported else []:
        console.print(f"note: {safe(note)}", highlight=False)
    console.print(f"report: {safe(Path(out) / 'report.md')}  ·  {safe(Path(out) / 'report.html')}")
    exit_on_failed_runs(results, Path(out))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    """Add this module's commands to the app (see midtrain/cli.py)."""
    groups["study"].command("import")(study_import)
