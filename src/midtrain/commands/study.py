"""`midtrain study run|show|init|prune`: run a study from one TOML file, print its verdicts, start
one, remove the checkpoints a finished study no longer needs.

Exit codes: 0 every run finished, 1 some runs failed (the report is still written), 2 bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from midtrain.commands.study_plan import print_plan
from midtrain.console import err_console, safe
from midtrain.errors import MidtrainError

console = Console()
FAILED_RUNS_EXIT = 1


def study_run(
    study: Annotated[Path, typer.Argument(help="The study TOML file.")],
    out: Annotated[
        Path, typer.Option("--out", help="Study directory (created; reused to resume).")
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the plan; run nothing.")
    ] = False,
    executor: Annotated[str, typer.Option(help="local, ray or slurm.")] = "local",
    workers: Annotated[int, typer.Option(help="Local executor: parallel run processes.")] = 1,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (default: local Ray).")
    ] = None,
    reanalyze: Annotated[
        bool,
        typer.Option(
            "--reanalyze",
            help="Allow an analysis plan that differs from the one registered before the first "
            "run (the report says the analysis changed after results).",
        ),
    ] = False,
) -> None:
    """Run a microanneal study: control + arms, evaluation, analysis, report."""
    from midtrain.driver.runner import run_study
    from midtrain.report import verdict_table
    from midtrain.report.render import lr_edge_note
    from midtrain.study.config import load_study

    cfg = load_study(study)
    if cfg.starts:
        _run_grid(cfg, out, dry_run, executor=executor, workers=workers, address=address)
        return
    if dry_run:
        print_plan(cfg, out)
        return
    results = run_study(cfg, out, executor=executor, workers=workers, address=address,
                        reanalyze=reanalyze)  # fmt: skip
    console.print(verdict_table(results))
    if (edge := lr_edge_note(results)) is not None:
        err_console.print(f"warning: {safe(edge)}", highlight=False)
    console.print(f"report: {safe(Path(out) / 'report.md')}  ·  {safe(Path(out) / 'report.html')}")
    exit_on_failed_runs(results, Path(out))


def _run_grid(cfg, out: Path, dry_run: bool, **run_kw) -> None:
    """`starts = [...]`: the study from every start (timing x weight), then the grid."""
    from midtrain.design.grid import run_grid, start_list, sub_config, table

    starts = start_list(cfg)
    if dry_run:
        for s in starts:
            console.print(f"[bold]start {safe(s.label)}[/]: {safe(s.checkpoint)}")
            print_plan(sub_config(cfg, s), Path(out) / s.dir)
        return
    grid, results = run_grid(cfg, Path(out), **run_kw)
    console.print(table(grid))
    console.print(f"grid: {safe(Path(out) / 'grid.md')}  ·  {safe(Path(out) / 'grid.html')}")
    code = 0
    for s, r in zip(starts, results, strict=True):
        try:
            exit_on_failed_runs(r, Path(out) / s.dir)
        except typer.Exit as e:
            code = e.exit_code
    if code:
        raise typer.Exit(code)


def exit_on_failed_runs(results, out: Path) -> None:
    """One line per run that did not finish, with its log; then exit code 1."""
    failed = results.failed_runs
    for r in failed:
        log = out / r.dir / "log.jsonl"
        err_console.print(
            f"failed run {safe(r.name)} ({r.status}): {safe(r.error or 'see its log')}; "
            f"log {safe(log)}",
            highlight=False,
        )
    for p in results.missing_probes:
        err_console.print(
            f"SFT probe of {safe(p.run)} on {safe(p.set)} did not finish; see {safe(out / p.dir)}",
            highlight=False,
        )
    for m in results.missing_merges:
        err_console.print(
            f"merge of {safe(m.arm)}'s seeds did not finish; run the study again", highlight=False
        )
    if failed or results.missing_probes or results.missing_merges:
        raise typer.Exit(FAILED_RUNS_EXIT)


def study_show(study_dir: Annotated[Path, typer.Argument(help="A study directory.")]) -> None:
    """Print the verdict table of a study; while one runs, also its runs' progress (and Slurm
    jobs)."""
    from pydantic import ValidationError

    from midtrain.report import verdict_table
    from midtrain.study.progress import driven
    from midtrain.study.results import StudyResult

    p = Path(study_dir) / "results.json"
    if not p.is_file() and (Path(study_dir) / "study.json").is_file():  # running: no results yet
        _print_progress(Path(study_dir))
        return
    if not p.is_file():
        raise MidtrainError(
            f"{p} not found; run `midtrain study run STUDY.toml --out {study_dir}` first"
        )
    try:
        results = StudyResult.load(p)
    except (ValueError, ValidationError) as e:
        reason = " ".join(str(e).split())[:120]
        raise MidtrainError(
            f"{p}: not a results.json of this midtrain version ({reason}); re-run the study"
        ) from None
    console.print(verdict_table(results))
    if driven(Path(study_dir)):  # a later look or a resume is running: where its runs stand
        _print_progress(Path(study_dir))


def _print_progress(out: Path) -> None:
    """The runs' status, step and Slurm job; whether a `study run` drives the study now."""
    from midtrain.study.progress import driven, progress_table

    console.print(progress_table(out))
    if driven(out):
        console.print("a `midtrain study run` is driving this study now", highlight=False)


def study_init(
    checkpoint: Annotated[Path, typer.Argument(help="HF causal-LM folder to anneal from.")],
    stores: Annotated[
        list[str], typer.Option("--store", help="NAME=STORE_DIR, repeated (midtrain data prepare).")
    ],
    out: Annotated[Path, typer.Option("--out", help="The study file to write (must not exist).")],
    base: Annotated[
        str | None,
        typer.Option(
            help="The normal mix: a store, or several as NAME:RATIO,... (NAME,NAME: shares by "
            "their tokens); default: the first store."
        ),
    ] = None,
    tasks: Annotated[
        list[str], typer.Option(help="lm-eval task names: repeat it or give a comma list.")
    ] = [],  # noqa: B006 - typer reads the default
    include_path: Annotated[
        Path | None, typer.Option(help="A folder of your own lm-eval task YAMLs.")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            help="A published protocol: marin, olmo2, olmo3, liu2025, llama3 (docs/presets.md)."
        ),
    ] = None,
    role: Annotated[
        list[str], typer.Option(help="--preset: ROLE=STORE (flan, hq, math, code, qa); repeatable.")
    ] = [],  # noqa: B006 - typer reads the default
    sft: Annotated[
        list[str],
        typer.Option(help="--preset: an SFT set NAME=TRAIN.jsonl[:VAL.jsonl]; repeatable."),
    ] = [],  # noqa: B006
    start: Annotated[
        list[Path], typer.Option(help="--preset liu2025: an earlier start checkpoint; repeatable.")
    ] = [],  # noqa: B006
    grid_role: Annotated[
        str | None,
        typer.Option(
            help="--preset liu2025 with --start: the role whose candidate gets the "
            "weight grid (default code, the paper's case study)."
        ),
    ] = None,
    tokens: Annotated[
        int | None,
        typer.Option(
            help="Anneal tokens per run (default: 100M, or less to fit the stores; with --preset "
            "the protocol's share of --full-run-tokens)."
        ),
    ] = None,
    full_run_tokens: Annotated[
        int | None,
        typer.Option(
            help="Tokens of the whole pretraining run, written as full_run_tokens (cost shares, "
            "checkpoint-too-early); required with --preset."
        ),
    ] = None,
    start_lr: Annotated[
        float | None, typer.Option(help="The LR the checkpoint was trained at (default: its own).")
    ] = None,
) -> None:
    """Write a commented starter study (or a published protocol's, with --preset)."""
    from midtrain.design.init import write_starter

    if preset is not None:
        return _init_preset(preset, checkpoint, stores, out, include_path, base=base, tasks=tasks,
                            role_items=role, sft_items=sft, starts=start, tokens=tokens,
                            full_run_tokens=full_run_tokens, start_lr=start_lr,
                            grid_role=grid_role)  # fmt: skip
    if role or sft or start or grid_role:
        raise MidtrainError("--role, --sft, --start and --grid-role go with --preset NAME")
    path = write_starter(checkpoint, stores, out, base=base, tasks=tasks,
                         include_path=include_path, tokens=tokens, start_lr=start_lr,
                         full_run_tokens=full_run_tokens)  # fmt: skip
    console.print(
        f"wrote {safe(path)}; check it with `midtrain study run {safe(path)} --out DIR --dry-run`"
    )


def _init_preset(preset: str, checkpoint: Path, stores: list[str], out: Path,
                 include_path: Path | None, tasks: list[str], **kw) -> None:  # fmt: skip
    """`study init --preset`: the protocol's study for this checkpoint and these stores."""
    from midtrain.design.init import parse_tasks
    from midtrain.design.preset_file import write_preset

    if include_path is not None:
        raise MidtrainError("--include-path: not taken with --preset; set include_path "
                            "under [eval] of the written file")  # fmt: skip
    path = write_preset(preset, checkpoint, stores, out, tasks=",".join(parse_tasks(tasks)), **kw)
    _print_preset_next(preset, path)


def _print_preset_next(preset: str, path: Path) -> None:
    """How to check a preset's study, and the protocol's next step (its folder filled in)."""
    from midtrain.design.presets import PRESETS

    folder = safe(str(path.with_suffix("")))
    console.print(f"wrote {safe(path)}; check it with `midtrain study run {safe(path)} --out "
                  f"{folder} --dry-run`")  # fmt: skip
    if then := PRESETS[preset].then:
        console.print(f"then, once it has run: `{safe(then.format(dir=folder))}`")


def study_prune(
    study_dir: Annotated[Path, typer.Argument(help="A study directory (or a `starts` grid's).")],
    keep: Annotated[
        str | None,
        typer.Option(help="weights, full or none: instead of the study's own [keep] run."),
    ] = None,
) -> None:
    """Remove the checkpoints a finished study no longer needs under its [keep] policy."""
    from midtrain.driver.prune import prune_study
    from midtrain.study.keep import fmt_bytes

    report = prune_study(study_dir, keep)
    for path in report.removed:
        console.print(f"removed {safe(path)}", highlight=False)
    for path in report.left_alone:
        err_console.print(f"left alone {safe(path)}: not in the plan rebuilt from study.json "
                          "(its inputs moved or changed)", highlight=False)  # fmt: skip
    linked = f" ({fmt_bytes(report.bytes - report.freed)} still linked from other studies)"
    console.print(f"pruned {len(report.removed)} paths: {fmt_bytes(report.freed)} freed"
                  f"{linked if report.bytes > report.freed else ''}", highlight=False)  # fmt: skip


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["study"].command("run")(study_run)
    groups["study"].command("show")(study_show)
    groups["study"].command("init")(study_init)
    groups["study"].command("prune")(study_prune)
