"""`midtrain study run|show`: run a study from one TOML file, or print a finished study's verdicts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.errors import MidtrainError

console = Console()


def study_run(
    study: Annotated[Path, typer.Argument(help="The study TOML file.")],
    out: Annotated[
        Path, typer.Option("--out", help="Study directory (created; reused to resume).")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; run nothing.")
    ] = False,
    executor: Annotated[str, typer.Option(help="local or ray.")] = "local",
    workers: Annotated[int, typer.Option(help="Local executor: parallel run processes.")] = 1,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: local Ray).")
    ] = None,
) -> None:
    """Run a microanneal study: control + arms, evaluation, analysis, report."""
    from midtrain.study.config import load_study

    cfg = load_study(study)
    if dry_run:
        print_plan(cfg, out)
        return
    from midtrain.study.report import verdict_table
    from midtrain.study.runner import run_study

    results = run_study(cfg, out, executor=executor, workers=workers, address=address)
    console.print(verdict_table(results))
    console.print(f"report: {Path(out) / 'report.md'}  ·  {Path(out) / 'report.html'}")


def print_plan(cfg, out: Path) -> None:
    from midtrain.study.runner import dry_run_rows, prepare

    plan = prepare(cfg, Path(out).resolve())
    rows = dry_run_rows(plan)
    t = Table(title=f"study {cfg.name}: {len(rows)} runs + 1 eval of the start checkpoint")
    for col in ("run", "mix", "tokens", "est. FLOPs", "est. seconds", "share of full run"):
        t.add_column(col)
    for r in rows:
        share = f"{r['share_of_full_run']:.3%}" if r["share_of_full_run"] is not None else "–"
        t.add_row(
            r["run"],
            " / ".join(f"{k} {v:.0%}" for k, v in r["mix"].items()),
            f"{r['tokens']:,}",
            f"{r['flops']:.3g}" if r["flops"] else "–",
            f"{r['seconds']:.0f}" if r["seconds"] else "–",
            share,
        )
    console.print(t)
    shown: set[str] = set()
    for r in rows:
        key = json.dumps(r["mix"], sort_keys=True)
        if key not in shown and r.get("token_table") is not None:
            shown.add(key)
            console.print(r["token_table"])
    total_f = sum(r["flops"] or 0 for r in rows)
    total_s = sum(r["seconds"] or 0 for r in rows)
    console.print(
        f"total: {total_f:.3g} FLOPs, ~{total_s / 60:.1f} min of training (before evaluation)"
    )


def study_show(study_dir: Annotated[Path, typer.Argument(help="A study directory.")]) -> None:
    """Print the verdict table of a finished study."""
    from midtrain.study.report import verdict_table

    p = Path(study_dir) / "results.json"
    if not p.is_file():
        raise MidtrainError(
            f"{p} not found; run `midtrain study run STUDY.toml --out {study_dir}` first"
        )
    console.print(verdict_table(json.loads(p.read_text())))


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["study"].command("run")(study_run)
    groups["study"].command("show")(study_show)
