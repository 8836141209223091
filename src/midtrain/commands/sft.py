"""`midtrain sft`, `midtrain data check-format` and `midtrain bench sft`: thin wrappers.

Exit codes: 0 done, 2 bad input (nothing written), 3 every LR of the grid diverged;
under torchrun (docs/scaling.md) every rank runs the same command and only rank 0 prints;
`data check-format` exits 1 when it finds chat special tokens.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from midtrain.console import err_console, safe

console = Console()

PATH_FIELDS = ("checkpoint", "data", "val")


def sft(
    checkpoint: Annotated[Path, typer.Argument(help="HF causal-LM folder to fine-tune.")],
    out: Annotated[Path, typer.Option("--out", help="SFT directory (re-run to resume).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Training rows (JSONL: prompt/response or messages)."),
    ] = None,
    val: Annotated[
        Path | None,
        typer.Option("--val", help="Validation rows (default: val_fraction of --data)."),
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="SFT config TOML with any other fields.")
    ] = None,
    lr: Annotated[
        list[float] | None, typer.Option("--lr", help="An LR of the grid (repeat for more).")
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the training rows.")] = None,
    seed: Annotated[int | None, typer.Option(help="Data order, split and dropout.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and print the plan and the format check.")
    ] = False,
) -> None:
    """Fine-tune CHECKPOINT per LR of the grid, keep the LR with the lowest validation loss."""
    from midtrain.errors import MidtrainError
    from midtrain.schema import load_toml
    from midtrain.sft import load_sft_config, plan_sft, run_sft
    from midtrain.sft.grid import edge_warning

    fields: dict[str, Any] = {}  # the --config TOML and the flags, validated as an SftConfig
    if config is not None:
        fields = load_toml(config, "--config")
        base = config.resolve().parent
        fields.update({k: str(base / fields[k]) for k in PATH_FIELDS if fields.get(k)})
    given = {"checkpoint": checkpoint, "data": data, "val": val, "lrs": lr or None,
             "epochs": epochs, "seed": seed}  # fmt: skip
    fields.update({k: str(v) if isinstance(v, Path) else v for k, v in given.items()
                   if v is not None})  # fmt: skip
    if "data" not in fields:
        raise MidtrainError("--data: required; pass a JSONL file of SFT rows")
    cfg = load_sft_config(fields)
    quiet = os.environ.get("RANK", "0") != "0"  # under torchrun, rank 0 prints for the job
    try:
        if dry_run:
            plan_sft(cfg) if quiet else print_dry_run(cfg)
            return
        result = run_sft(cfg, out)
    except MidtrainError as e:  # every rank fails alike: rank 0 says it once
        if quiet:
            raise typer.Exit(e.exit_code) from None
        raise
    if quiet:
        return
    if (edge := edge_warning([g.lr for g in result.grid], result.chosen_lr)) is not None:
        err_console.print(f"warning: {safe(edge)}", highlight=False)  # a study prints a count
    b = result.val_before
    console.print(f"validation loss per response token (mean over {b.examples} examples): "
                  f"{b.loss:.4f} before fine-tuning")  # fmt: skip
    for g in result.grid:
        mark = "  <- chosen" if g.lr == result.chosen_lr else ""
        loss = f"{g.val_loss:.4f}" if g.val_loss is not None else safe(g.reason or "")
        console.print(f"  lr {g.lr:g}: {g.status}, {loss}{mark}")
    console.print(f"{result.steps} steps x {len(result.grid)} LRs; "
                  f"checkpoint: {safe(result.final_checkpoint)}")  # fmt: skip


def print_dry_run(cfg: Any) -> None:
    from midtrain.sft import plan_sft

    plan = plan_sft(cfg)
    console.print_json(json.dumps(plan.resolved()))
    s = plan.summary()
    console.print(
        f"{s.train_examples:,} train / {s.val_examples:,} val examples; {s.truncated} truncated, "
        f"{s.dropped} dropped; {s.train_tokens:,} tokens ({s.response_tokens:,} trained) per "
        f"epoch; {plan.steps:,} steps x {len(cfg.lrs)} LRs; padding {s.pad_fraction:.1%}"
    )
    for line in plan.fmt.warnings("sft data"):
        console.print(f"[yellow]warning:[/] {safe(line)}", soft_wrap=True)
    for w in plan.warnings:
        if not w.startswith("sft data: chat special tokens"):
            console.print(f"[yellow]warning:[/] {safe(w)}", soft_wrap=True)


def check_format(
    paths: Annotated[
        list[Path], typer.Argument(help="Data files or folders (any data input), token stores.")
    ],
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="Also look for its specials; decodes token stores."),
    ] = None,
    text_field: Annotated[
        str | None,
        typer.Option(help="Read this field only (default: every string of a JSONL row)."),
    ] = None,
) -> None:
    """Count chat special tokens written as text (exit 1 when any is found).

    A token store's first 100,000 training documents are decoded with --tokenizer and scanned.
    """
    from midtrain.data.tokenizer import load_tokenizer
    from midtrain.errors import MidtrainError
    from midtrain.sft.formatcheck import file_texts, scan

    tok = load_tokenizer(tokenizer) if tokenizer is not None else None
    for p in paths:
        if not p.exists():
            raise MidtrainError(f"{p}: no such file or folder; check the path")
    found = 0
    for p in paths:
        report = scan(file_texts(str(p), text_field, tok), tok)
        found += report.total
        lines = report.warnings(str(p)) or [f"{p}: {report.texts:,} texts, no chat special tokens"]
        for line in lines:
            console.print(safe(line), soft_wrap=True)
    if found:
        raise typer.Exit(1)


def bench_sft(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    steps: Annotated[int, typer.Option(min=1, help="Timed steps per round and loop.")] = 20,
    rounds: Annotated[int, typer.Option(min=1, help="Interleaved rounds (anneal, then SFT).")] = 3,
    threads: Annotated[int, typer.Option(min=0, help="torch threads (0 = default).")] = 0,
) -> None:
    """SFT tokens/s ÷ anneal tokens/s on the same model, batch and sequence length."""
    from midtrain.bench.sft import run_bench

    result = run_bench(steps=steps, rounds=rounds, threads=threads)
    if as_json:
        print(json.dumps(result))
    else:
        console.print(result)


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("sft")(sft)
    groups["data"].command("check-format")(check_format)
    groups["bench"].command("sft")(bench_sft)
