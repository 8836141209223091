"""`midtrain study prune`: apply a study's `[keep]` policy again to the runs already in its folder.

The plan is rebuilt from study.json and each finished chain's prune targets removed (study/keep.py
holds the policy and the `prune` stage); the study's lock is held while it runs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from midtrain.errors import MidtrainError
from midtrain.jobs import Chain
from midtrain.study.keep import RunPolicy


class PruneReport(BaseModel):
    removed: list[str] = []  # relative to the folder given
    bytes: int = 0
    freed: int = 0
    left_alone: list[str] = []  # run folders of study.json the rebuilt plan does not name


def study_folders(out: Path) -> list[Path]:
    """The study in `out`, each start's study of a `starts` grid, or each round's study of an
    integration history."""
    if (out / "study.json").is_file():
        return [out]
    found = sorted(p.parent for g in ("starts/*/study.json", "*/study.json") for p in out.glob(g))
    if not found:
        raise MidtrainError(
            f"{out}: not a study folder (no study.json); pass the --out folder of "
            "`midtrain study run`"
        )
    return found


@contextlib.contextmanager
def _locked(folders: list[Path]) -> Iterator[None]:
    from midtrain.driver.runner import study_lock

    with contextlib.ExitStack() as stack:
        for f in folders:
            try:
                stack.enter_context(study_lock(f))
            except MidtrainError:
                raise MidtrainError(
                    f"{f}: the study is still running (another midtrain process holds its "
                    "lock); wait for it to finish, then prune"
                ) from None
        yield


def prune_study(out: str | Path, run: str | None = None) -> PruneReport:
    """Apply the study's [keep] (its `run` replaced by `run` when given) to what has finished."""
    out = Path(out).resolve()
    if run is not None and run not in get_args(RunPolicy):
        raise MidtrainError(
            f'--keep: {run!r} is not a keep policy; use "weights", "full" or "none"'
        )
    if not out.is_dir():
        raise MidtrainError(f"{out}: no such folder; pass the --out folder of `midtrain study run`")
    folders = study_folders(out)
    report = PruneReport()
    with _locked(folders):
        plans = [_recorded_plan(f, run) for f in folders]
        for f, (plan, chains) in zip(folders, plans, strict=True):
            _prune_chains(chains, out, report)
            report.left_alone += _left_alone(f, plan, out)
    return report


def _recorded_plan(folder: Path, run: str | None) -> tuple[Any, list[Chain]]:
    """The plan of the study as study.json recorded it (its config, its runs' seeds), and its
    chains with their prune jobs (the merge chains too)."""
    from midtrain.driver.collect import Finished
    from midtrain.io import read_json
    from midtrain.study.config import StudyConfig
    from midtrain.study.merging import merge_chains
    from midtrain.study.plan import make_plan

    record = read_json(folder / "study.json")
    try:
        cfg = StudyConfig.model_validate(record["config"])
    except (ValidationError, KeyError, TypeError):
        raise MidtrainError(f"{folder / 'study.json'}: not a study record of this midtrain "
                            "version; run the study again with `midtrain study run`") from None  # fmt: skip
    if run is not None:
        cfg = cfg.model_copy(update={"keep": cfg.keep.model_copy(update={"run": run})})
    seeds: dict[str, list[int]] = {}
    for r in record.get("runs", []):
        seeds.setdefault(r["arm"], []).append(int(r["seed"]))
    plan = make_plan(cfg, folder, seeds)
    merges = merge_chains(plan, Finished(plan).done) if cfg.merge_seeds else []
    return plan, plan.chains() + merges


def _prune_chains(chains: list[Chain], out: Path, report: PruneReport) -> None:
    for chain in chains:
        tail = chain[-1]
        if tail.stage != "prune" or any(j.cached() is None for j in chain[:-1]):
            continue  # unfinished: a job of it may still read what the policy would remove
        res = tail.run()
        report.removed += [os.path.relpath(p, out) for p in res.removed]
        report.bytes, report.freed = report.bytes + res.bytes, report.freed + res.freed


def _left_alone(folder: Path, plan: Any, out: Path) -> list[str]:
    from midtrain.io import read_json

    planned = {r.dir.resolve() for r in plan.runs}
    dirs = [folder / r["dir"] for r in read_json(folder / "study.json").get("runs", [])]
    return [os.path.relpath(d, out) for d in dirs if d.is_dir() and d.resolve() not in planned]
