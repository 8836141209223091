"""`reuse = [STUDY_DIR, ...]`: finished runs of other studies stand in for identical runs here.

A run's id hashes everything that decides what it computes (the content of the checkpoint and
stores, the mix, tokens, seed, schedule and run fields), so a finished run with the same id in
another study is the same run. It is hard-linked into this study's folder (copied where links
cannot be made: another file system), with its evaluation and SFT probes; each job still checks
its own cache, so a probe with other settings runs anew. Every file of a finished run was written
atomically (replaced, never changed in place), so the linked copies share nothing that changes.
An integration round reuses its control this way: the previous round's mix, trained alike.
The linked evaluations are re-pointed at the linked checkpoints (the same files), so they stay
cached without reading weights that the other study's keep policy may have removed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from midtrain.console import err_console, safe
from midtrain.io import atomic_write_json, read_json
from midtrain.study.plan import StudyPlan
from midtrain.train.rundir import finished


def _finished_runs(study: Path) -> dict[str, Path]:
    """{run id: folder} of the finished runs of a study folder."""
    record = study / "study.json"
    if not record.is_file():
        return {}
    out = {}
    for r in read_json(record).get("runs", []):
        d = study / r["dir"]
        if finished(d) is not None:
            out[r["run_id"]] = d
    return out


def _link(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)


def reuse_runs(plan: StudyPlan) -> int:
    """Link finished identical runs from the studies in `reuse`; returns how many were linked."""
    sources: dict[str, Path] = {}
    for d in plan.config.reuse:
        for rid, path in _finished_runs(Path(d)).items():
            sources.setdefault(rid, path)
    n = 0
    for r in plan.runs:
        src = sources.get(r.run_id)
        if src is not None and _link_tree(src, r.dir):
            _repoint_evals(src, r.dir)
            err_console.print(f"  [cyan]reused[/] {safe(r.name)} from {safe(src)}", highlight=False)
            n += 1
    for d in plan.config.reuse:  # the start checkpoint's evaluation (its folder names its hash)
        start = Path(d) / "runs" / plan.start_dir.name
        if (start / "eval" / "eval.json").is_file():
            _link_tree(start, plan.start_dir)
    return n


def _repoint_evals(src: Path, dst: Path) -> None:
    """Each linked eval.json of a checkpoint inside `src` names the same checkpoint inside `dst`
    (what the eval stage's relocation would record after hashing it); written anew, so the
    other study's file is untouched."""
    prefixes = {str(src), str(src.resolve())}
    for f in dst.rglob("eval.json"):
        rec = read_json(f)
        ckpt = str(rec.get("checkpoint", ""))
        head = next((p for p in prefixes if ckpt.startswith(p + os.sep)), None)
        if head is not None:
            atomic_write_json(f, rec | {"checkpoint": str(dst) + ckpt[len(head) :]})


def _link_tree(src: Path, dst: Path) -> bool:
    """Link `src` to `dst` whole (False when `dst` exists or is `src`)."""
    if dst.exists() or src.resolve() == dst.resolve():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".reuse-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, copy_function=_link, symlinks=True)
    tmp.rename(dst)  # atomic: the folder appears whole or not at all
    return True
