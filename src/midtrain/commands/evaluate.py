"""`midtrain eval CHECKPOINT`: per-domain bits-per-byte and lm-eval tasks, per example."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from midtrain.console import safe
from midtrain.errors import MidtrainError

if TYPE_CHECKING:
    from midtrain.eval.results import EvalResult, MetricSummary

console = Console()


def _domains(spec: str | None) -> dict[str, Path]:
    """NAME=STORE_DIR pairs (rows are labelled NAME), or bare store dirs (named by their manifest)."""
    from midtrain.data.store import open_store

    out: dict[str, Path] = {}
    for item in filter(None, (x.strip() for x in (spec or "").split(","))):
        name, sep, path = (x.strip() for x in item.partition("="))
        if not sep:
            path, name = name, open_store(name, f"--domains {name}").name
        if not name or not path:
            raise MidtrainError(f"--domains: {item!r} is not NAME=STORE_DIR or STORE_DIR")
        if name in out:
            raise MidtrainError(
                f"--domains: the label {name!r} is used twice; label each store once"
            )
        out[name] = Path(path)
    return out


def eval_cmd(
    checkpoint: Annotated[
        Path | None, typer.Argument(help="HF causal-LM folder (not with --check-tasks).")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for eval.json + examples.jsonl.")
    ] = None,
    tasks: Annotated[str, typer.Option(help="Comma-separated lm-eval task names.")] = "",
    include_path: Annotated[Path | None, typer.Option(help="Folder of extra task YAMLs.")] = None,
    domains: Annotated[
        str | None, typer.Option(help="NAME=STORE_DIR,... held-out bpb per store.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Examples per task.")] = None,
    num_fewshot: Annotated[int, typer.Option(help="Few-shot examples.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Batch size (tasks and domains).")] = 32,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    allow_code_execution: Annotated[
        bool,
        typer.Option(
            "--allow-code-execution",
            help="Run code tasks (lm-eval unsafe_code: HumanEval, MBPP): executes model output.",
        ),
    ] = False,
    check_tasks: Annotated[
        bool,
        typer.Option(
            "--check-tasks",
            help="Load the tasks without a model: size, output type, one rendered example each.",
        ),
    ] = False,
) -> None:
    """Evaluate a checkpoint on tasks and per-domain loss; cached by content hash."""
    from midtrain.eval import evaluate

    names = [t.strip() for t in tasks.split(",") if t.strip()]
    if check_tasks:
        _check_tasks(names, include_path, num_fewshot)
        return
    doms = _domains(domains)
    if not names and not doms:
        raise MidtrainError("nothing to evaluate: pass --tasks and/or --domains")
    if checkpoint is None or out is None:
        missing = "CHECKPOINT" if checkpoint is None else "--out"
        raise MidtrainError(
            f"eval: {missing} is required; pass a checkpoint folder and --out "
            "(or --check-tasks to load the tasks alone)"
        )
    res = evaluate(checkpoint, tasks=names, include_path=include_path, domains=doms, out=out,
                   limit=limit, num_fewshot=num_fewshot, batch_size=batch_size, device=device,
                   allow_code_execution=allow_code_execution)  # fmt: skip
    console.print(results_table(res))
    console.print(
        f"{safe(out / 'eval.json')}  ·  {safe(out / 'examples.jsonl')}  ({res.seconds:.1f}s)"
    )


def _check_tasks(names: list[str], include_path: Path | None, num_fewshot: int) -> None:
    """Each task as lm-eval loads it: size, output type, data files and its first example."""
    from midtrain.eval.lmeval import preview_tasks

    if not names:
        raise MidtrainError("--check-tasks: no task; pass --tasks NAME[,NAME] (and --include-path)")
    previews = preview_tasks(names, include_path, num_fewshot)
    for p in previews:
        console.print(
            f"[bold]{safe(p.name)}[/]  {p.output_type}  {p.size} docs ({safe(p.split)} split)"
        )
        if p.data_files is not None:
            console.print(f"  data_files: {safe(p.data_files)}", highlight=False)
        console.print("  prompt:", highlight=False)
        for line in p.prompt.splitlines() or [""]:
            console.print(f"    {safe(line)}", highlight=False)
        if p.choices is not None:
            console.print(f"  choices: {safe(p.choices)}", highlight=False)
            gold = p.target
            if isinstance(gold, int) and 0 <= gold < len(p.choices):
                gold = f"{gold} ({p.choices[gold]!r})"
            console.print(f"  gold: {safe(gold)}", highlight=False)
        else:
            console.print(f"  target: {safe(repr(p.target))}", highlight=False)
    console.print(f"{len(previews)} task(s) load offline")


def results_table(res: EvalResult) -> Table:
    t = Table(title=f"eval of {safe(res.checkpoint)}")
    cols = ("what", "n", "score", "acc", "acc_norm", "gold logprob/byte", "margin", "bpb",
            "loss/token")  # fmt: skip
    for col in cols:
        t.add_column(col)

    def f(x: MetricSummary) -> str:
        if x.mean is None:
            return "–"
        se = f" ± {x.stderr:.3f}" if x.stderr is not None else ""
        return f"{x.mean:.3f}{se}"

    for name, m in res.results.tasks.items():
        score = m.score or m.acc
        label = f"{f(score)} {safe(m.score_metric)}" if m.score_metric else f(score)
        t.add_row(safe(name), str(score.n), label, f(m.acc), f(m.acc_norm),
                  f(m.gold_logprob_per_byte), f(m.margin), "", "")  # fmt: skip
    for name, d in res.results.domains.items():
        loss = f"{d.loss_per_token:.3f}" if d.loss_per_token is not None else "–"
        t.add_row(f"domain {safe(name)}", str(d.docs), "", "", "", "", "", f(d.bpb), loss)
    return t


def register(app: typer.Typer, groups: dict[str, typer.Typer]) -> None:
    app.command("eval")(eval_cmd)
