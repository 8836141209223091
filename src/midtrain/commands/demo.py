"""`midtrain demo [--quick] [--out DIR]` and `midtrain demo world --out DIR`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
demo_app = typer.Typer(help="The embedded demo: a real study on a generated world, on a CPU.")


@demo_app.callback(invoke_without_command=True)
def demo(
    ctx: typer.Context,
    quick: Annotated[
        bool, typer.Option("--quick", help="Smaller budgets (~3 min; used by tests).")
    ] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("demo-out"),
    workers: Annotated[int, typer.Option(help="Parallel run processes.")] = 1,
    preset: Annotated[
        str | None,
        typer.Option(
            help="Run a published protocol instead: marin, olmo2, olmo3, liu2025, llama3."
        ),
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option(
            help="Cache for the demo base model (default $MIDTRAIN_CACHE or ~/.cache/midtrain)."
        ),
    ] = None,
    to_end: Annotated[
        bool,
        typer.Option(
            "--to-end",
            help="liu2025: every start trains to the end of the run (the paper's timing grid).",
        ),
    ] = False,
) -> None:
    """Generate the demo world, build (or reuse) the base, run the demo study, write the report."""
    if ctx.invoked_subcommand is not None:
        return
    from midtrain.demo.pipeline import run_demo
    from midtrain.errors import MidtrainError

    if workers < 1:
        raise MidtrainError(f"--workers {workers}: must be >= 1")
    if out.exists() and not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass a folder for the demo")
    if to_end and preset != "liu2025":
        raise MidtrainError("--to-end: only with --preset liu2025 (the preset with starts)")
    if preset is not None:
        _preset(out, preset, quick, workers, cache, "to_end" if to_end else "cooldown")
        return
    from midtrain.report import verdict_table

    results = run_demo(out, quick=quick, workers=workers, cache=cache)
    console.print(verdict_table(results))
    _tables(Path(out))


def _preset(out: Path, preset: str, quick: bool, workers: int, cache: Path | None,
            starts_mode: str) -> None:  # fmt: skip
    from midtrain.demo.presets import run_preset_demo

    path = run_preset_demo(out, preset, quick=quick, workers=workers, cache=cache,
                           starts_mode=starts_mode)  # fmt: skip
    study = Path(out) / "study"
    if (study / "grid.json").is_file():
        from midtrain.design.grid import GridResult, table

        console.print(table(GridResult.model_validate_json((study / "grid.json").read_text())))
        console.print(f"study file: {path}  ·  grid: {study / 'grid.md'}")
        return
    from midtrain.report import verdict_table
    from midtrain.study.results import StudyResult

    console.print(verdict_table(StudyResult.load(study / "results.json")))
    console.print(f"study file: {path}")
    _tables(Path(out))


def _tables(out: Path) -> None:
    study = out / "study"
    console.print(
        f"report: {study / 'report.md'}  ·  {study / 'report.html'}  ·  {study / 'results.json'}"
    )
    rounds = out / "rounds"
    if (rounds / "rounds.md").is_file():
        from midtrain.integrate.report import load_history, table

        console.print(table(load_history(rounds)))
        console.print(
            f"rounds: {rounds / 'rounds.md'}  ·  round file: {Path(out) / 'round-1.toml'}"
        )


@demo_app.command("world")
def world(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the world into.")],
    seed: Annotated[int, typer.Option(help="World seed.")] = 0,
    scale: Annotated[float, typer.Option(help="Size multiplier.")] = 1.0,
) -> None:
    """Write the demo world's sources (jsonl) and lm-eval tasks (YAML + JSONL)."""
    from midtrain.demo.world import generate_world
    from midtrain.errors import MidtrainError
    from midtrain.io import to_json

    if not 0 < scale <= 100:
        raise MidtrainError(f"--scale {scale}: must be in (0, 100], e.g. 1.0")
    if seed < 0:
        raise MidtrainError(f"--seed {seed}: must be >= 0")
    if out.exists() and not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass a folder for the world")
    info = generate_world(out, seed=seed, scale=scale)
    console.print_json(to_json(info))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.add_typer(demo_app, name="demo")
