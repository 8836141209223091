"""`midtrain bench gpu`: tokens/s and MFU of a ~125M and a ~1B Llama anneal on one GPU,
evaluation examples/s, peak GPU memory (docs/benchmarks.md#gpu). Needs CUDA: without it, one
error line and exit 2."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from midtrain.errors import MidtrainError

console = Console()


def bench_gpu(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    steps: Annotated[
        int, typer.Option(min=10, help="Timed steps per model (a multiple of 10), after 10 warmup.")
    ] = 20,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="125m or 1b (repeat; default both).")
    ] = None,
    peak_flops: Annotated[
        float | None,
        typer.Option(min=1.0, help="The GPU's dense bf16 FLOP/s, for a GPU not in the table."),
    ] = None,
) -> None:
    """Tokens/s and MFU of a ~125M and a ~1B Llama anneal (bf16, compiled), evaluation
    examples/s and peak GPU memory, on the first CUDA device."""
    from midtrain.bench.gpu import MODELS, require_cuda, run_bench
    from midtrain.train.log import LOG_EVERY

    every = LOG_EVERY["cuda"]
    if steps % every:
        raise MidtrainError(
            f"--steps: {steps} is not a multiple of {every} (the log is read every {every} steps "
            f"on CUDA); pass e.g. {steps - steps % every or every}"
        )
    models = tuple(dict.fromkeys(model or MODELS))
    if bad := [m for m in models if m not in MODELS]:
        raise MidtrainError(f"--model: {bad[0]!r} is not a benchmark model; use one of "
                            f"{', '.join(MODELS)}")  # fmt: skip
    require_cuda()  # before any world is built
    result = run_bench(models=models, steps=steps, peak_override=peak_flops)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(result)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["bench"].command("gpu")(bench_gpu)
