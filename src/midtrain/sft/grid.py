"""An SFT probe: one fine-tune per LR of the grid, the LR with the lowest validation loss chosen.

Liu, Neubig & Xiong (2025) pick each checkpoint's SFT LR from a small grid by validation loss;
so does this. Every grid point, its loss (or why it diverged) and the choice go into OUT/sft.json.
A diverged LR is recorded and skipped; the probe fails only when every LR diverges.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

from midtrain.errors import MidtrainError
from midtrain.io import (
    atomic_write_json,
    atomic_write_jsonl,
    hash_file,
    hash_tree,
    library_versions,
    read_json,
)
from midtrain.sft.config import SftConfig, load_sft_config
from midtrain.sft.plan import SftPlan, plan_sft
from midtrain.sft.results import GridPoint, SftResult, SftRunResult, ValSummary
from midtrain.train import rundir
from midtrain.train.log import Diverged

BEFORE = "val_examples_before.jsonl"


def lr_dir(out: Path, lr: float) -> Path:
    return out / f"lr-{lr:g}"


def finished(out: Path) -> SftResult | None:
    """The result of a finished probe in `out`, or None."""
    return rundir.finished(out, SftResult, "sft.json")


def chosen_val_losses(out: Path, res: SftResult) -> dict[int, float]:
    """{validation example index: loss} of the chosen LR's fine-tune (per-token mean NLL)."""
    rows = (lr_dir(out, res.chosen_lr) / "val_examples.jsonl").read_text().splitlines()
    return {int(r["index"]): float(r["loss"]) for r in map(json.loads, rows)}


class CheckpointRef(TypedDict):
    path: str
    hash: str  # hash_tree of the folder


class SftInputs(TypedDict):
    """inputs.json of a probe (written once; a resume with other contents is refused)."""

    checkpoint: CheckpointRef
    tokenizer_hash: str
    files: dict[str, str]  # "data" / "val" -> file hash
    versions: dict[str, str]  # library -> version


def _inputs(plan: SftPlan) -> SftInputs:
    """inputs.json: content hashes of the checkpoint and the data; library versions."""
    from midtrain.data.tokenizer import tokenizer_hash

    c = plan.cfg
    files = {k: hash_file(v) for k, v in (("data", c.data), ("val", c.val)) if v is not None}
    return {
        "checkpoint": {"path": c.checkpoint, "hash": hash_tree(c.checkpoint)},
        "tokenizer_hash": tokenizer_hash(plan.tokenizer),
        "files": files,
        "versions": library_versions(),
    }


def check_inputs_unchanged(out: Path, inputs: SftInputs) -> None:
    f = out / "inputs.json"
    if not f.is_file():
        return
    saved: SftInputs = read_json(f)
    if (saved["checkpoint"]["hash"], saved["files"]) != (
        inputs["checkpoint"]["hash"],
        inputs["files"],
    ):
        raise MidtrainError(
            f"--out {out}: its checkpoint or data changed since the probe started; "
            "use another --out"
        )


def choose(grid: list[GridPoint]) -> GridPoint:
    """The LR with the lowest validation loss (ties: the first in grid order)."""
    done = [g for g in grid if g.status == "done" and g.val_loss is not None]
    if not done:
        reasons = "; ".join(f"lr {g.lr:g}: {g.reason}" for g in grid)
        raise Diverged(f"every LR of the grid diverged ({reasons}); lower lrs", {"reason": reasons})
    return min(done, key=lambda g: g.val_loss)


def run_sft(
    cfg: SftConfig | Mapping[str, Any] | str | Path, out_dir: str | Path, *,
    progress: bool | None = None,
) -> SftResult:  # fmt: skip
    """Fine-tune at every LR of the grid (resuming), choose by validation loss, write sft.json.
    Under torchrun every rank runs the grid (`parallel`); rank 0 writes (docs/scaling.md)."""
    from midtrain import env
    from midtrain.train import distributed
    from midtrain.train.checkpoint import read_trainer_state

    cfg = load_sft_config(cfg)
    out = Path(out_dir).resolve()
    rundir.check_existing(out, cfg.identity(), "an SFT probe")
    if (done := finished(out)) is not None:
        return done
    plan = plan_sft(cfg)  # every input check; nothing written yet
    for w in plan.warnings if plan.dist.main else ():
        print(f"warning: {w}", file=sys.stderr)
    env.setup(cfg.threads)
    inputs = _inputs(plan)
    check_inputs_unchanged(out, inputs)
    for lr in cfg.lrs:  # a state/ of another job shape (torchrun or not): refused before any write
        saved = read_trainer_state(lr_dir(out, lr) / "state")
        distributed.check_resume(saved.run if saved else None, plan.dist)
    with distributed.session(plan.dist, plan.device):
        return distributed.broadcast(plan.dist, _grid(plan, out, inputs, progress))


def _grid(plan: SftPlan, out: Path, inputs: SftInputs, progress: bool | None):
    """The grid after the checks (rank 0's result; None on the other ranks). Interrupted (SIGINT
    or SIGTERM, cli.py): the probe's status and its running LR's say so."""
    main = plan.dist.main
    if main:
        atomic_write_json(out / "config.json", plan.resolved())
        if not (out / "inputs.json").is_file():
            atomic_write_json(out / "inputs.json", inputs)
        rundir.write_status(out, "running")
    try:
        return _points(plan, out, progress)
    except KeyboardInterrupt:
        if main:
            for lr in plan.cfg.lrs:
                rundir.mark_interrupted(lr_dir(out, lr))
            rundir.mark_interrupted(out)
        raise


def _points(plan: SftPlan, out: Path, progress: bool | None) -> SftResult | None:
    """Every LR's fine-tune, the choice, and sft.json (written by rank 0)."""
    main = plan.dist.main
    grid, runs = [], {}
    for lr in plan.cfg.lrs:
        point, run = grid_point(plan, lr, lr_dir(out, lr), progress, out / BEFORE)
        grid.append(point)
        if run is not None:
            runs[lr] = run
    before = val_before(plan, out) if main else None  # written by the first fine-tune
    try:
        best = choose(grid)
    except Diverged as e:
        if main:
            rundir.write_status(out, "failed", reason=str(e))
        raise
    return _write(out, plan, before, grid, runs[best.lr]) if before is not None else None


def grid_point(
    plan: SftPlan, lr: float, out: Path, progress: bool | None, before: Path
) -> tuple[GridPoint, SftRunResult | None]:
    """One LR's fine-tune (cached, resumed or run); a diverged one is recorded, not raised."""
    from midtrain.sft.run import run_one

    status = rundir.read_status(out)
    if status is not None and status.status == "failed":
        return GridPoint(lr=lr, status="diverged", dir=str(out), reason=status.reason), None
    try:
        run = run_one(plan, lr, out, progress, before)
    except Diverged as e:
        return GridPoint(lr=lr, status="diverged", dir=str(out), reason=str(e)), None
    return GridPoint(lr=lr, status="done", val_loss=run.val.loss, dir=str(out)), run


def val_before(plan: SftPlan, out: Path) -> ValSummary:
    """The checkpoint's own validation loss per example (what fine-tuning is measured against):
    OUT/val_examples_before.jsonl as the first fine-tune wrote it, else (every LR finished before
    the file was written) computed here on this process."""
    from midtrain.sft.run import summarise, validate
    from midtrain.train.checkpoint import load_model

    path = out / BEFORE
    if path.is_file():
        return summarise([json.loads(line) for line in path.read_text().splitlines()])
    model = load_model(plan.cfg.checkpoint, plan.device, "checkpoint")
    summary, rows = validate(model, plan.val.examples, plan)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_jsonl(path, rows)
    return summary


def edge_warning(lrs: list[float], chosen: float) -> str | None:
    """A warning when the chosen LR is the lowest or highest of a grid of two or more: the best
    LR may lie beyond the grid."""
    grid = sorted(set(lrs))
    if len(grid) < 2 or chosen not in (grid[0], grid[-1]):
        return None
    side, way = ("lowest", "below") if chosen == grid[0] else ("highest", "above")
    return (
        f"the chosen LR {chosen:g} is the {side} of the grid ({', '.join(f'{x:g}' for x in grid)}); "
        f"the best LR may lie {way} it: extend the grid (lrs) {way} {chosen:g}"
    )


def _write(
    out: Path, plan: SftPlan, before: ValSummary, grid: list[GridPoint], best: SftRunResult
) -> SftResult:
    edge = edge_warning(plan.cfg.lrs, best.lr)
    result = SftResult(
        checkpoint=plan.cfg.checkpoint, chosen_lr=best.lr, val_loss=best.val.loss, val=best.val,
        val_before=before, grid=grid, final_checkpoint=best.final_checkpoint, steps=plan.steps,
        epochs=plan.cfg.epochs, data=plan.summary(), format_check=dict(plan.fmt.counts),
        warnings=plan.warnings + ([edge] if edge else []),
    )  # fmt: skip
    atomic_write_json(out / "sft.json", result.model_dump(mode="json"))
    rundir.write_status(out, "done", step=plan.steps)
    return result
