"""`midtrain merge` (checkpoint averaging) and `midtrain bench merge` (its peak memory)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from midtrain.console import safe

console = Console()


def merge(
    checkpoints: Annotated[
        list[Path], typer.Argument(help="Two or more HF checkpoint folders of one model.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The merged HF folder (created).")],
    weights: Annotated[
        str | None,
        typer.Option(help="Comma-separated weights >= 0, one per checkpoint (default uniform)."),
    ] = None,
) -> None:
    """Average checkpoints (fp32 accumulation, cast back) into a new HF folder + merge.json."""
    from midtrain.merge import parse_weights, run_merge

    res = run_merge(checkpoints, out, parse_weights(weights))
    r = res.record
    if res.already:
        console.print(f"already merged: {safe(out)} (merge.json names these inputs and weights)")
        return
    shown = ", ".join(f"{w:.4g}" for w in r.weights)
    console.print(
        f"merged {len(r.inputs)} checkpoints (weights {shown}) into {safe(out)}: "
        f"{r.tensors} tensors, {r.dtype}, {r.total_size / 1e9:.3f} GB in {r.shards} shard(s), "
        f"{r.wall_s:.1f} s"
    )


def bench_merge(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    params: Annotated[float, typer.Option(help="Parameters of each random checkpoint.")] = 1e9,
    shards: Annotated[int, typer.Option(help="Safetensors shards per input checkpoint.")] = 4,
) -> None:
    """Peak RSS of merging two random bf16 Llama-like checkpoints, ÷ one checkpoint's size."""
    from midtrain.bench.merge import run_bench
    from midtrain.errors import MidtrainError

    if shards < 1 or params < 1e4:
        raise MidtrainError("bench merge: --shards must be >= 1 and --params >= 1e4")
    result = run_bench(params=int(params), shards=shards)
    if as_json:
        print(json.dumps(result))
        return
    console.print(
        f"{result['params']:,} params x 2 checkpoints of {result['checkpoint_gb']:.2f} GB: "
        f"peak RSS {result['peak_rss_gb']:.2f} GB = {result['peak_rss_ratio']:.2f} x one "
        f"checkpoint (goal <= {result['goal_ratio']}); {result['peak_above_baseline_ratio']:.2f} "
        f"x above the {result['baseline_rss_gb']:.2f} GB of Python + torch; merge "
        f"{result['merge_s']:.1f} s, {result['read_gb_per_s']:.2f} GB/s read"
    )


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("merge")(merge)
    groups["bench"].command("merge")(bench_merge)
