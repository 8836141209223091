"""`midtrain bench memory`: peak RSS of training (one process, two FSDP2 ranks) and evaluation of
a 150–300M Llama on CPU against the analytic need (docs/benchmarks.md)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.errors import MidtrainError

if TYPE_CHECKING:
    from midtrain.bench.reports import ChildError, EvalPeaks, MemoryReport, TrainPeaks

console = Console()


def bench_memory(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    params: Annotated[
        str, typer.Option(help="Model preset: 150m (162M params), 300m, or tiny (tests).")
    ] = "150m",
    steps: Annotated[int, typer.Option(min=1, help="Optimizer steps of each training run.")] = 3,
    seq_len: Annotated[int, typer.Option(min=8, help="Tokens per sequence.")] = 256,
    micro_batch: Annotated[
        int, typer.Option(min=1, help="Sequences per micro batch (a step has two).")
    ] = 1,
    threads: Annotated[int, typer.Option(min=1, help="torch threads per process.")] = 1,
    eval_limit: Annotated[int, typer.Option(min=1, help="Examples per evaluation task.")] = 50,
    eval_batch: Annotated[int, typer.Option(min=1, help="Evaluation batch size.")] = 32,
    allocator_check: Annotated[
        bool,
        typer.Option(
            help="Train again with glibc's mmap threshold fixed at 128 KiB: the heap's share."
        ),
    ] = True,
) -> None:
    """Peak RSS: one process vs the analytic need, FSDP2 ranks vs one process, evaluation."""
    from midtrain.bench.memory import PRESETS, run_bench

    if params not in PRESETS:
        raise MidtrainError(
            f"--params: {params!r} is not a preset; use one of {', '.join(PRESETS)}"
        )
    result = run_bench(params=params, steps=steps, seq_len=seq_len, micro_batch=micro_batch,
                       threads=threads, eval_limit=eval_limit, eval_batch=eval_batch,
                       allocator_check=allocator_check)  # fmt: skip
    if as_json:
        print(json.dumps(result))
    else:
        console.print(table(result))


def table(r: MemoryReport) -> Table:
    """One row per measurement: peak growth, what it is compared with, the ratio, the target."""
    a, s, ev = r["analytic"], r["single"], r["eval"]
    t = Table(title=f"bench memory: {r['preset']} ({a['params']:,} params), seq {r['seq_len']}, "
                    f"micro batch {r['micro_batch']}, {r['steps']} steps")  # fmt: skip
    for col in ("measurement", "peak growth MiB", "against", "ratio", "target", "met"):
        t.add_column(col)
    t.add_row("one process", _mib(s), f"analytic {a['need_mib']:,.0f} MiB",
              _num(r["ratio_single_vs_analytic"]), f"<= {r['targets']['single_vs_analytic']}",
              _met(r["meets_single"]))  # fmt: skip
    for i, rank in enumerate(r["fsdp"]):
        t.add_row(f"FSDP2 rank {i}", _mib(rank), "one process",
                  _num(r["ratio_fsdp_rank_vs_single"][i]), f"<= {r['targets']['fsdp_rank_vs_single']}",
                  _met(r["meets_fsdp"]))  # fmt: skip
    eps = ev.get("examples_per_s")
    t.add_row("evaluation", _mib(ev), f"weights {a['weights_mib']:,.0f} MiB",
              _num(r["ratio_eval_vs_weights"]), f"{eps} examples/s" if eps else "-", "-")  # fmt: skip
    if (fx := r["fixed_mmap_threshold"]) is not None:
        t.add_row("one process, fixed mmap threshold", _mib(fx["single"]),
                  f"analytic {a['need_mib']:,.0f} MiB", _num(fx["ratio_single_vs_analytic"]),
                  "(heap's share)", "-")  # fmt: skip
        for i, rank in enumerate(fx["fsdp"]):
            t.add_row(f"FSDP2 rank {i}, fixed mmap threshold", _mib(rank), "one process, fixed",
                      _num(fx["ratio_fsdp_rank_vs_single"][i]), "(heap's share)", "-")  # fmt: skip
    for where, err in r["errors"].items():
        t.add_row(where, "error", err[:80], "", "", "")
    return t


def _mib(res: TrainPeaks | EvalPeaks | ChildError) -> str:
    v = res.get("peak_growth_mib")
    return f"{v:,.0f}" if v is not None else "-"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _met(v: bool) -> str:
    return "yes" if v else "NO"


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    groups["bench"].command("memory")(bench_memory)
