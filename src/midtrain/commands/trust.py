"""`midtrain bench calibrate` (A/A studies) and `midtrain validate` (decisions vs a reference)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.console import safe

if TYPE_CHECKING:
    from midtrain.study.validate import Validation

console = Console()


def bench_calibrate(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    study: Annotated[
        Path | None, typer.Option(help="Your study file (default: the demo world).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Working folder.")] = Path("calibrate-out"),
    studies: Annotated[int, typer.Option(help="Independent A/A studies (disjoint seeds).")] = 4,
    shards: Annotated[int, typer.Option(help="Null arms per study (document shards).")] = 10,
    seeds: Annotated[int, typer.Option(help="Seeds per study.")] = 2,
    tokens: Annotated[int | None, typer.Option(help="Anneal tokens per run.")] = None,
    eval_limit: Annotated[int | None, typer.Option(help="Examples per task.")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="The quick demo world (tests).")] = False,
    workers: Annotated[int, typer.Option(help="Parallel run processes.")] = 1,
) -> None:
    """False include/reject rate and interval coverage on candidates that cannot matter."""
    from midtrain.bench.calibrate import CalibrationSettings, run_calibration
    from midtrain.errors import MidtrainError

    for name, v in {"--studies": studies, "--shards": shards, "--workers": workers}.items():
        if v < 1:
            raise MidtrainError(f"{name} {v}: must be >= 1")
    if seeds < 2:
        raise MidtrainError(f"--seeds {seeds}: an A/A study needs >= 2 seeds to estimate noise")
    s = CalibrationSettings(studies=studies, shards=shards, seeds=seeds, tokens=tokens,
                            eval_limit=eval_limit, workers=workers)  # fmt: skip
    res = run_calibration(out, s, study=study, quick=quick)
    if as_json:
        print(res.model_dump_json())
        return
    r = res.false_decision_rate
    console.print(
        f"{res.null_arms} null arms: {res.false_decisions} false decisions "
        f"({res.false_include} include, {res.false_reject} reject) = {r.rate:.3f} "
        f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}] (stated {res.nominal:.3f}); primary coverage "
        f"{res.coverage.rate:.3f}, task {res.task_coverage.rate:.3f}, domain "
        f"{res.domain_coverage.rate:.3f}; {res.wall_s:.0f}s"
    )


def validate(
    study_dir: Annotated[Path, typer.Argument(help="A finished study directory.")],
    reference: Annotated[
        Path | None, typer.Option(help="A finished reference study directory (same arms).")
    ] = None,
    scale_tokens: Annotated[
        int | None,
        typer.Option(help="Run the reference: the same study with tokens x N, on other seeds."),
    ] = None,
    reuse_seeds: Annotated[
        bool,
        typer.Option(
            "--reuse-seeds",
            help="With --scale-tokens: run the reference on the study's own seeds (shared data "
            "order: agreement looks better than it is).",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    workers: Annotated[int, typer.Option(help="Parallel run processes (reference).")] = 1,
) -> None:
    """Decision accuracy of a study's verdicts against a reference with more compute."""
    from midtrain.errors import MidtrainError
    from midtrain.study.validate import compare, run_reference

    if reference is not None and scale_tokens is not None:
        raise MidtrainError("validate: --reference DIR and --scale-tokens N both given; give one")
    if reuse_seeds and scale_tokens is None:
        raise MidtrainError("--reuse-seeds: only with --scale-tokens N (a --reference has its "
                            "own seeds); drop it")  # fmt: skip
    if reference is None:
        reference = run_reference(study_dir, scale_tokens, workers=workers, reuse_seeds=reuse_seeds)
    res = compare(study_dir, reference)
    if as_json:
        print(res.model_dump_json())
        return
    t = Table(title=f"{safe(study_dir)} vs {safe(reference)}")
    for col in ("arm", "verdict", "Δ", "reference verdict", "reference Δ", "sign"):
        t.add_column(col)
    signs = _signs(res)
    for a in res.arms:
        t.add_row(safe(a.arm), a.verdict, f"{a.delta:+.3f}", a.reference_verdict,
                  f"{a.reference_delta:+.3f}", signs[a.arm])  # fmt: skip
    console.print(t)
    console.print(safe(res.summary()), highlight=False)
    if res.tied_pairs:
        ties = "; ".join(f"{safe(a)} – {safe(b)}" for a, b in res.tied_pairs)
        console.print(f"tied (equal deltas in one study; not counted): {ties}", highlight=False)


def _signs(res: Validation) -> dict[str, str]:
    """Per arm, its (arm, control) pair: does the sign of its delta hold in the reference?"""
    from midtrain.study.validate import CONTROL, pair_up

    word = {"agree": "same", "disagree": "flipped", "tie": "tie"}
    pairs = pair_up({a.arm: a.delta for a in res.arms},
                    {a.arm: a.reference_delta for a in res.arms})  # fmt: skip
    return {p.a: word[p.outcome] for p in pairs if p.b == CONTROL}


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["bench"].command("calibrate")(bench_calibrate)
    app.command("validate")(validate)
