"""`midtrain bench calibrate` (A/A studies) and `midtrain validate` (decisions vs a reference)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.console import safe

if TYPE_CHECKING:
    from midtrain.stats.calibrate import CalibrationResult
    from midtrain.stats.validate import Validation

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
    fraction: Annotated[
        list[float] | None, typer.Option("--fraction", help="Null arms at this share (repeat).")
    ] = None,
    cpt: Annotated[bool, typer.Option("--cpt", help="Also @cpt null arms (100% a shard).")] = False,
    unpaired: Annotated[
        bool, typer.Option("--unpaired", help="paired_streams = false (own mix order per run).")
    ] = False,
    guards: Annotated[bool, typer.Option("--guards", help="Guard every base domain.")] = False,
    auto_seeds: Annotated[
        bool, typer.Option("--auto-seeds", help='seeds = "auto" (max_seeds 3).')
    ] = False,
    select: Annotated[str, typer.Option(help="eval.select: all | snr.")] = "all",
    correction: Annotated[str, typer.Option(help="holm | bh | none.")] = "holm",
    first_seed: Annotated[int, typer.Option(help="The first study's first seed.")] = 0,
    designs: Annotated[
        bool,
        typer.Option("--designs", help="Every design: fractions 0.1/0.3/0.5, @cpt, guards, snr."),
    ] = False,
) -> None:
    """False include/reject rate and interval coverage on candidates that cannot matter."""
    from midtrain.bench.calibrate import run_calibration
    from midtrain.errors import MidtrainError
    from midtrain.stats.calibrate import CalibrationSettings

    for name, v in {"--studies": studies, "--shards": shards, "--workers": workers}.items():
        if v < 1:
            raise MidtrainError(f"{name} {v}: must be >= 1")
    if seeds < 2:
        raise MidtrainError(f"--seeds {seeds}: an A/A study needs >= 2 seeds to estimate noise")
    if select not in ("all", "snr") or correction not in ("holm", "bh", "none"):
        raise MidtrainError(f"--select {select} / --correction {correction}: select is all|snr, "
                            "correction holm|bh|none")  # fmt: skip
    fractions = fraction or ([0.1, 0.3, 0.5] if designs else [0.3])
    if any(not 0 < f < 1 for f in fractions):
        raise MidtrainError(f"--fraction {fractions}: each must be in (0, 1); use --cpt for 1")
    s = CalibrationSettings(
        studies=studies, shards=shards, seeds=seeds, tokens=tokens, eval_limit=eval_limit,
        workers=workers, fractions=fractions, cpt=cpt or designs, paired=not unpaired,
        guards=guards or designs, auto_seeds=auto_seeds, select="snr" if designs else select,
        correction=correction, first_seed=first_seed,
    )  # fmt: skip
    res = run_calibration(out, s, study=study, quick=quick)
    if as_json:
        print(res.model_dump_json())
        return
    _print_calibration(res)


def _print_calibration(res: CalibrationResult) -> None:
    """The false decisions, coverage and, per design, what pairing bought."""
    r = res.false_decision_rate
    console.print(
        f"{res.null_arms} null arms: {res.false_decisions} false decisions "
        f"({res.false_include} include, {res.false_reject} reject) = {r.rate:.3f} "
        f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}] (stated {res.nominal:.3f}); primary coverage "
        f"{res.coverage.rate:.3f}, task {res.task_coverage.rate:.3f}, domain "
        f"{res.domain_coverage.rate:.3f}; {res.wall_s:.0f}s"
    )
    if res.familywise is not None and res.familywise.rate is not None:
        console.print(f"studies with a false decision (family-wise): {res.familywise.k} of "
                      f"{res.familywise.n} = {res.familywise.rate:.3f}")  # fmt: skip
    for key, d in res.designs.items():
        corr = [f"{c:+.2f}" for c in d.correlation if c is not None]
        console.print(
            f"  design {key}: {d.false_decisions} of {d.null_arms} decided, primary coverage "
            f"{d.coverage.rate:.3f}, domain {d.domain_coverage.rate:.3f}; arm-control "
            f"correlation {', '.join(corr) or '-'}"
        )
        if d.pooled_correlation is not None:
            console.print(
                f"    pooled over studies: correlation {d.pooled_correlation:+.2f}, sphericity "
                f"{d.pooled_sphericity or float('nan'):.2f}, diff sd {d.diff_sd:.4f}, median "
                f"half-width {d.median_half_width:.4f}, MDE at 2 seeds {d.mde_2_seeds:.4f}"
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
    from midtrain.driver.runner import run_reference
    from midtrain.errors import MidtrainError
    from midtrain.stats.validate import compare

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
    for col in ["arm", "verdict", "Δ", "reference verdict", "reference Δ", "sign"]:
        t.add_column(col)
    signs = _signs(res)
    for a in res.arms:
        row = [safe(a.arm), a.verdict, f"{a.delta:+.3f}", a.reference_verdict,
               f"{a.reference_delta:+.3f}", signs[a.arm]]  # fmt: skip
        t.add_row(*row)
    console.print(t)
    console.print(safe(res.summary()), highlight=False)
    if res.tied_pairs:
        ties = "; ".join(f"{safe(a)} – {safe(b)}" for a, b in res.tied_pairs)
        console.print(f"tied (equal deltas in one study; not counted): {ties}", highlight=False)


def _signs(res: Validation) -> dict[str, str]:
    """Per arm, its (arm, control) pair: does the sign of its delta hold in the reference?"""
    from midtrain.stats.validate import CONTROL, pair_up

    word = {"agree": "same", "disagree": "flipped", "tie": "tie"}
    pairs = pair_up({a.arm: a.delta for a in res.arms},
                    {a.arm: a.reference_delta for a in res.arms})  # fmt: skip
    return {p.a: word[p.outcome] for p in pairs if p.b == CONTROL}


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["bench"].command("calibrate")(bench_calibrate)
    app.command("validate")(validate)
