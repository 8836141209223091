"""`midtrain anneal`, `midtrain pretrain` and `midtrain bench train`: thin wrappers over the API.

Exit codes: 0 done, 2 bad input (`MidtrainError`, nothing written), 3 the run stopped on a
non-finite loss (`train.Diverged`; OUT/status.json says failed, with the step and last good line).
Under torchrun (docs/scaling.md) every rank runs the same command; only rank 0 prints.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from midtrain.console import safe
from midtrain.errors import MidtrainError

console = Console()

ConfigOpt = Annotated[
    Path, typer.Option("--config", help="Run config TOML (README: Training runs).")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Run directory (created; re-run to resume).")]
DryOpt = Annotated[
    bool, typer.Option("--dry-run", help="Print the resolved config, token table, FLOPs; no run.")
]


def anneal(config: ConfigOpt, out: OutOpt, dry_run: DryOpt = False) -> None:
    """Cool down from a checkpoint on a mixture (warm start; resumes OUT when it exists)."""
    from midtrain import train

    _run(train.load_run_config(config), out, dry_run)


def pretrain(config: ConfigOpt, out: OutOpt, dry_run: DryOpt = False) -> None:
    """Train a fresh model (the model table) at a constant LR; saves its training state."""
    from midtrain import train

    _run(train.pretrain_config(train.load_run_config(config)), out, dry_run)


def _run(cfg: Any, out: Path, dry_run: bool) -> None:
    from midtrain import train

    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 prints for the job
    try:
        if dry_run:
            train.plan_run(cfg) if quiet else print_dry_run(cfg)
            return
        result = train.run(cfg, out)
    except MidtrainError as e:  # every rank fails alike: rank 0 says it once
        if quiet:
            raise typer.Exit(e.exit_code) from None
        raise
    if quiet:
        return
    keys = {"steps", "tokens", "final_loss", "mean_loss_last_10pct", "tokens_per_s", "wall_s"}
    console.print(result.model_dump(include=keys))
    console.print(f"final checkpoint: {safe(result.final_checkpoint)}")


def print_dry_run(cfg: Any) -> None:
    from midtrain import train

    plan = train.plan_run(cfg)
    est = train.estimate(plan)
    console.print_json(json.dumps(plan.resolved()))
    console.print(plan.sampler.token_table())
    console.print(
        f"{est.steps:,} steps x {plan.tokens_per_step:,} tokens = {est.tokens:,} tokens; "
        f"N = {est.params:,} params (non-embedding + head); "
        f"~{est.flops:.3g} FLOPs, ~{est.seconds:.0f} s on {plan.device} (rough)"
    )
    for w in est.warnings:
        console.print(f"[yellow]warning:[/] {safe(w)}")


def bench_train(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    steps: Annotated[
        int, typer.Option(min=1, help="Timed steps per round and configuration.")
    ] = 20,
    rounds: Annotated[
        int, typer.Option(min=1, help="Interleaved rounds of all configurations.")
    ] = 3,
    compile: Annotated[
        bool, typer.Option(help="Also time both compiled configurations (ours, HF torch_compile).")
    ] = True,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = default).")] = 0,
    precision: Annotated[
        str, typer.Option(help="fp32, or bf16: autocast on both sides (HF bf16=True).")
    ] = "fp32",
) -> None:
    """Our loop vs transformers.Trainer (eager vs eager, compiled vs compiled) on the demo model."""
    if precision not in ("fp32", "bf16"):
        raise MidtrainError(f"--precision: {precision!r} is not fp32 or bf16; pass one of them")
    from midtrain.bench.train import CONFIGS, run_bench

    configs = CONFIGS if compile else tuple(c for c in CONFIGS if c.endswith("_eager"))
    result = run_bench(steps=steps, rounds=rounds, threads=threads, configs=configs,
                       precision=precision)  # fmt: skip
    if as_json:
        print(json.dumps(result))
    else:
        console.print(result)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("anneal")(anneal)
    app.command("pretrain")(pretrain)
    groups["bench"].command("train")(bench_train)
