"""`midtrain bench eval` and `midtrain bench prepare`: thin wrappers over `midtrain.bench`."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

console = Console()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
RoundsOpt = Annotated[int, typer.Option(min=1, help="Timed rounds of each side (after a warm-up).")]


def bench_eval(
    as_json: JsonOpt = False,
    limit: Annotated[int, typer.Option(min=1, help="Examples per task.")] = 100,
    batch_size: Annotated[int, typer.Option(min=1, help="lm-eval batch size, both sides.")] = 32,
    rounds: RoundsOpt = 3,
    scale: Annotated[float, typer.Option(min=0.01, max=100, help="Demo world scale.")] = 0.3,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = default).")] = 0,
) -> None:
    """Our evaluation ÷ lm-eval's own HFLM: examples/s on the same model, tasks and batch size."""
    from midtrain.bench.evalspeed import run_bench

    result = run_bench(limit=limit, batch=batch_size, rounds=rounds, scale=scale, threads=threads)
    if as_json:
        print(json.dumps(result))
        return
    eps = result["examples_per_s"]
    console.print(
        f"eval: ours {eps['ours']:,} examples/s, lm-eval HFLM {eps['lm_eval']:,} examples/s: "
        f"ratio {result['ratio']} (target >= {result['target']}; "
        f"{result['examples_total']:,} examples per side and round)"
    )


def bench_prepare(
    as_json: JsonOpt = False,
    scale: Annotated[
        float, typer.Option(min=0.01, max=100, help="Demo world scale (1: ~12 MB of JSONL).")
    ] = 1.0,
    rounds: RoundsOpt = 3,
    copies: Annotated[
        int, typer.Option(min=2, help="Copies of the input for the peak-RSS comparison.")
    ] = 4,
    rss: Annotated[bool, typer.Option(help="Measure peak RSS at 1x and COPIES x.")] = True,
) -> None:
    """`data prepare` tokens/s ÷ the tokenizer's encode_batch on the same documents; peak RSS."""
    from midtrain.bench.prepare import run_bench

    result = run_bench(scale=scale, rounds=rounds, copies=copies, rss=rss)
    if as_json:
        print(json.dumps(result))
        return
    tps = result["tokens_per_s"]
    console.print(
        f"prepare: ours {tps['ours']:,} tokens/s, encode_batch {tps['encode_batch']:,} tokens/s: "
        f"ratio {result['ratio']} (target >= {result['target']}; vs encode_batch_fast "
        f"{result['ratio_vs_encode_batch_fast']}); peak RSS {result['peak_rss_mib']} MiB"
    )


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["bench"].command("eval")(bench_eval)
    groups["bench"].command("prepare")(bench_prepare)
