"""`midtrain eval CHECKPOINT`: per-domain bits-per-byte and lm-eval tasks, per example."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.errors import MidtrainError

console = Console()


def _domains(spec: str | None) -> dict[str, Path]:
    """NAME=STORE_DIR pairs, or bare store dirs (named by their manifest)."""
    from midtrain.data.store import TokenStore

    out: dict[str, Path] = {}
    for item in filter(None, (spec or "").split(",")):
        name, _, path = item.partition("=")
        if not path:
            path, name = name, TokenStore.open(name).name
        out[name.strip()] = Path(path.strip())
    return out


def eval_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="HF causal-LM folder.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for eval.json + examples.jsonl.")],
    tasks: Annotated[str, typer.Option(help="Comma-separated lm-eval task names.")] = "",
    include_path: Annotated[Path | None, typer.Option(help="Folder of extra task YAMLs.")] = None,
    domains: Annotated[
        str | None, typer.Option(help="NAME=STORE_DIR,... held-out bpb per store.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Examples per task.")] = None,
    num_fewshot: Annotated[int, typer.Option(help="Few-shot examples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Batch size (tasks and domains).")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
) -> None:
    """Evaluate a checkpoint on tasks and per-domain loss; cached by content hash."""
    from midtrain.evaluation import evaluate

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    doms = _domains(domains)
    if not names and not doms:
        raise MidtrainError("nothing to evaluate: pass --tasks and/or --domains")
    res = evaluate(checkpoint, tasks=names, include_path=include_path, domains=doms, out=out,
                   limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, device=device)  # fmt: skip
    console.print(results_table(res))
    console.print(f"{out / 'eval.json'}  ·  {out / 'examples.jsonl'}  ({res['seconds']:.1f}s)")


def results_table(res: dict) -> Table:
    t = Table(title=f"eval of {res['checkpoint']}")
    for col in ("what", "n", "acc", "acc_norm", "gold logprob/byte", "margin", "bpb", "loss/token"):
        t.add_column(col)

    def f(x: dict | None) -> str:
        if not x or x.get("mean") is None:
            return "–"
        se = f" ± {x['stderr']:.3f}" if x.get("stderr") is not None else ""
        return f"{x['mean']:.3f}{se}"

    for name, m in res["results"]["tasks"].items():
        t.add_row(name, str(m["acc"]["n"]), f(m["acc"]), f(m["acc_norm"]),
                  f(m["gold_logprob_per_byte"]), f(m["margin"]), "", "")  # fmt: skip
    for name, d in res["results"]["domains"].items():
        t.add_row(
            f"domain {name}",
            str(d["docs"]),
            "",
            "",
            "",
            "",
            f(d["bpb"]),
            f"{d['loss_per_token']:.3f}",
        )
    return t


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("eval")(eval_cmd)
