"""What a study keeps on disk: the `[keep]` policy, the `prune` stage that applies it, and
`midtrain study prune`.

A finished run's `final/` holds its weights and, in `midtrain_state/`, the AdamW moments (twice
the weights) that only a run continuing from it would load; every LR of an SFT probe's grid and
every merge writes a checkpoint too. Nothing inside a study resumes from a *finished* run's
moments (every run starts from the study's checkpoint; probes start fresh AdamW; merges read the
weights), so by default they go once the run, its evaluation and its SFT probes are done:

- `run = "weights"` (default): drop a finished run's moments (and any leftover `state/`);
  `"full"`: keep everything; `"none"`: drop the weights too, after every job reading them (its
  evaluation, its probes, the merge of its arm's seeds) has finished.
- `sft = "none"` (default): no SFT checkpoint stays; `"chosen"`: the chosen LR's weights;
  `"all"`: every LR's checkpoint as written.
- `merge = false` (default): a merge's averaged weights go once the merge is evaluated.

Each chain of a study ends with a `prune` job over the folders the chain wrote, so a finished
chain is pruned at once (on the worker that ran it). A run's identity, its results, records,
logs and evaluations are never touched: every job's `cached()` still finds its result, and an
unfinished run or probe (its `state/`) is never pruned. What was removed from a checkpoint is
recorded in its `midtrain_state/pruned.json` (`train.checkpoint.removed_by_keep`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from midtrain.errors import MidtrainError
from midtrain.jobs import Chain, Job, Stage, register
from midtrain.schema import Strict, field
from midtrain.study.layout import MERGE_MODEL, MERGE_RECORD, POINT_EVALS
from midtrain.train.checkpoint import MOMENT_FILES, STATE_DIR, removed_by_keep, write_removed

Level = Literal["full", "weights", "none"]
RunPolicy = Literal["weights", "full", "none"]
SFT_LEVEL: dict[str, Level] = {"all": "full", "chosen": "weights", "none": "none"}
WEIGHT_GLOBS = ("*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                "pytorch_model.bin.index.json")  # fmt: skip


class KeepSpec(Strict):
    """The study's [keep]: which checkpoints stay once nothing in the study reads them."""

    run: RunPolicy = field(
        "weights",
        description='A finished run\'s final/: "weights" drops the AdamW moments once the run, its '
        'evaluation and its SFT probes are done; "full" keeps them (a later run can continue '
        'from it with its moments); "none" drops the weights too, once every job reading them '
        "(evaluation, SFT probes, the merge of its seeds) is done.",
    )
    sft: Literal["none", "chosen", "all"] = field(
        "none",
        description='SFT probe checkpoints once the probe is evaluated: "none", the "chosen" '
        'LR\'s weights, or "all" (every LR of the grid, as written).',
    )
    merge: bool = field(False, description="Keep each merge's averaged weights once evaluated.")

    def describe(self) -> str:
        return f'[keep] run = "{self.run}", sft = "{self.sft}", merge = {str(self.merge).lower()}'


class PruneTarget(Strict):
    """A folder some chain wrote, and what of its checkpoints stays."""

    kind: Literal["run", "probe", "merge", "points"]
    dir: str
    level: Level
    policy: str = ""  # the [keep] line that asked for it (recorded with what it removes)


class PruneSpec(Strict):
    targets: list[PruneTarget]


class PruneResult(BaseModel):
    removed: list[str] = []
    bytes: int = 0  # the size of what was removed
    freed: int = 0  # of which no other hard link remains (a `reuse` link keeps the rest)


# -- what a policy removes ------------------------------------------------------------------------


def checkpoint_removals(ckpt: Path, level: Level) -> list[Path]:
    """The files of a checkpoint folder that `level` does not keep (those present)."""
    if level == "full" or not ckpt.is_dir():
        return []
    found = [ckpt / STATE_DIR / f for f in MOMENT_FILES]
    if level == "none":
        found += [p for g in WEIGHT_GLOBS for p in sorted(ckpt.glob(g))]
    return [p for p in found if p.is_file()]


def _run(t: PruneTarget) -> list[Path]:
    from midtrain.train.rundir import finished

    d = Path(t.dir)
    if t.level == "full" or finished(d) is None:  # never a run that may still resume
        return []
    return [p for p in [d / "state"] if p.exists()] + checkpoint_removals(d / "final", t.level)


def _probe(t: PruneTarget) -> list[Path]:
    from midtrain.sft.grid import finished, lr_dir

    d = Path(t.dir)
    res = finished(d)
    if t.level == "full" or res is None:
        return []
    chosen = lr_dir(d, res.chosen_lr)
    out = []
    for lr in sorted(d.glob("lr-*")):
        keep: Level = t.level if lr == chosen else "none"
        out += [p for p in [lr / "state"] if p.exists()] + checkpoint_removals(lr / "final", keep)
    return out


def _merge(t: PruneTarget) -> list[Path]:
    d = Path(t.dir)
    if not ((d / MERGE_RECORD).is_file() and (d / "eval" / "eval.json").is_file()):
        return []
    return checkpoint_removals(d / MERGE_MODEL, t.level)


def _points(t: PruneTarget) -> list[Path]:
    """A run's eval-point weights (RUN/points/step-N), each once its evaluation is done."""
    d = Path(t.dir)
    out = []
    for ckpt in sorted((d / "points").glob("step-*")):
        if (d / POINT_EVALS / ckpt.name / "eval.json").is_file():
            out += checkpoint_removals(ckpt, t.level)
    return out


REMOVALS: dict[str, Callable[[PruneTarget], list[Path]]] = {
    "run": _run, "probe": _probe, "merge": _merge, "points": _points,
}  # fmt: skip


def removals(spec: PruneSpec) -> list[Path]:
    return [p for t in spec.targets for p in REMOVALS[t.kind](t)]


# -- the stage ------------------------------------------------------------------------------------


@register
class PruneStage(Stage):
    """Remove what the policy does not keep; done when nothing it would remove is left."""

    name = "prune"
    Spec = PruneSpec
    Result = PruneResult

    def run(self, spec: PruneSpec, out: Path) -> PruneResult:
        res = PruneResult()
        for t in spec.targets:
            for p in REMOVALS[t.kind](t):
                _record(p, t.policy)
                size, freed = _sizes(p)
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
                res.removed.append(str(p))
                res.bytes, res.freed = res.bytes + size, res.freed + freed
        return res

    def cached(self, spec: PruneSpec, out: Path) -> PruneResult | None:
        return None if removals(spec) else PruneResult()


def _record(p: Path, policy: str) -> None:
    """A file leaving a checkpoint folder is listed in its midtrain_state/pruned.json first."""
    ckpt = p.parent.parent if p.parent.name == STATE_DIR else p.parent
    if p.is_file() and (ckpt / "config.json").is_file():
        write_removed(ckpt, p.relative_to(ckpt).as_posix(), policy)


def _sizes(p: Path) -> tuple[int, int]:
    """(bytes, bytes whose last hard link this is) of a file or a folder."""
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file() and not f.is_symlink()]
    stats = [os.stat(f) for f in files]
    return sum(s.st_size for s in stats), sum(s.st_size for s in stats if s.st_nlink == 1)


# -- the study's prune jobs -----------------------------------------------------------------------


def prune_job(name: str, targets: list[PruneTarget]) -> Job | None:
    return Job.of("prune", name, targets[0].dir, PruneSpec(targets=targets)) if targets else None


def run_targets(
    keep: KeepSpec, run_dir: Path, probes: list[Path], merged: bool
) -> list[PruneTarget]:
    """A run's folder and its probes'. A run whose arm is merged keeps its weights until the
    merge chain (`merge_targets`) has read them."""
    level: Level = "weights" if merged and keep.run == "none" else keep.run
    policy = keep.describe()
    out = [PruneTarget(kind="run", dir=str(run_dir), level=level, policy=policy)]
    return out + probe_targets(keep, probes)


def probe_targets(keep: KeepSpec, probes: list[Path]) -> list[PruneTarget]:
    return [PruneTarget(kind="probe", dir=str(p), level=SFT_LEVEL[keep.sft], policy=keep.describe())
            for p in probes]  # fmt: skip


def merge_targets(keep: KeepSpec, merge_dir: Path, inputs: list[str]) -> list[PruneTarget]:
    """A merge's folder, and (run = "none") the weights of the runs it averaged."""
    policy = keep.describe()
    out = [PruneTarget(kind="merge", dir=str(merge_dir), level="full" if keep.merge else "none",
                       policy=policy)]  # fmt: skip
    if keep.run == "none":
        out += [PruneTarget(kind="run", dir=str(Path(i).parent), level="none", policy=policy)
                for i in inputs]  # fmt: skip
    return out


def with_prune(chain: Chain, name: str, targets: list[PruneTarget]) -> Chain:
    job = prune_job(name, targets)
    return chain + [job] if job is not None else chain


# -- a job that must read weights a policy removed ------------------------------------------------


def _sft_eval_reads(spec: Any) -> list[str]:
    from midtrain.sft.stage import chosen_eval

    job = chosen_eval(spec)
    return [job.checkpoint] if job is not None else []


READS: dict[str, Callable[[Any], list[str]]] = {
    "eval": lambda s: [s.checkpoint], "sft": lambda s: [s.checkpoint],
    "merge": lambda s: list(s.inputs), "sft_eval": _sft_eval_reads,
}  # fmt: skip


def check_readable(chains: list[Chain]) -> None:
    """Every pending job's checkpoints still hold their weights; else one line naming the
    checkpoint, the job and the fix (before anything runs)."""
    for chain in chains:
        for job in chain:
            gone = [c for c in READS.get(job.stage, lambda s: [])(job.spec) if _weights_gone(c)]
            if gone and job.cached() is None:
                raise MidtrainError(
                    f"{gone[0]}: its weights were removed by the study's keep policy, but the "
                    f"{job.stage} job of {job.name} must run again and reads them; delete "
                    f"{_owner(Path(gone[0]))} to compute it again, or undo the change that "
                    "asks for the new job"
                )


def _owner(ckpt: Path) -> Path:
    """The folder of the job that wrote a checkpoint: a run (its final/ or an eval point's
    points/step-N), an SFT probe (an LR's final), a merge."""
    nested = ckpt.parent.name.startswith("lr-") or ckpt.parent.name == "points"
    return ckpt.parent.parent if nested else ckpt.parent


def _weights_gone(ckpt: str) -> bool:
    return any(not f.startswith(STATE_DIR) for f in removed_by_keep(ckpt))


def fmt_bytes(n: float) -> str:
    """1234567 -> '1.2 MB' (decimal units, as `du --si` prints them)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
