"""The statistics of `merge_seeds`: each merged arm against its seeds, for results.json.

The merge minus each seed, and the merge minus the mean of the seeds, on the primary score. The
interval uses the study's pooled run-to-run noise (`NoiseFloor.primary_sd`, its degrees of
freedom) and treats the merge as one more run: se = sd x sqrt(1 + 1/n) for the mean of n seeds,
sd x sqrt(2) for one seed (study/merging.py runs the merges; docs/merging.md).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps

from midtrain.eval.results import Examples
from midtrain.stats.analysis import confidence_at, primary_score
from midtrain.study.config import CONTROL
from midtrain.study.merging import MODEL, merge_arms, merge_dir
from midtrain.study.results import MergeResult, MergeTask, NoiseFloor


def compare(plan, finished, tasks: list[str], noise: NoiseFloor | None) -> list[MergeResult]:  # noqa: ANN001
    """Each merged arm against its seeds (missing when a seed or the merge did not finish)."""
    cfg, metric = plan.config, plan.config.analysis.primary
    out = []
    for arm in merge_arms(cfg, plan.arms()):
        runs = plan.arm_runs(arm) if arm != CONTROL else plan.controls()
        res = MergeResult(arm=arm, seeds=[r.seed for r in runs], status="missing", metric=metric)
        evs = [finished.evals.get(r.name) for r in runs]
        inputs = [str(r.dir / "final") for r in runs]
        mdir = merge_dir(plan.out, arm, inputs)
        if (
            len(runs) < 2
            or any(e is None for e in evs)
            or not (mdir / "eval" / "eval.json").is_file()
        ):
            out.append(res)
            continue
        merged = Examples.load(mdir / "eval")
        m, seeds = (
            primary_score(merged, tasks, metric),
            [primary_score(e, tasks, metric) for e in evs],
        )
        res.status, res.checkpoint = "done", str((mdir / MODEL).relative_to(plan.out))
        res.merge_score, res.seed_scores = m, seeds
        res.per_seed_delta = [m - s for s in seeds]
        res.delta = m - float(np.mean(seeds))
        if noise is not None and noise.primary_sd is not None and noise.df > 0:
            res.noise_sd, res.noise_df = noise.primary_sd, noise.df
            q = float(sps.t.ppf(0.5 + confidence_at(cfg) / 2, noise.df))
            h1, hn = (
                q * noise.primary_sd * math.sqrt(2),
                q * noise.primary_sd * math.sqrt(1 + 1 / len(seeds)),
            )
            res.per_seed_ci = [[d - h1, d + h1] for d in res.per_seed_delta]
            res.ci = [res.delta - hn, res.delta + hn]
        res.tasks = _merge_tasks(merged, evs, cfg.eval.tasks, metric)
        res.domains = {d: MergeTask(merge=merged.domain_bpb(d), seeds=[e.domain_bpb(d) for e in evs])
                       for d in cfg.domain_names if d in merged.domains}  # fmt: skip
        out.append(res)
    return out


def _merge_tasks(merged: Examples, evs: list[Examples], tasks: list[str], metric: str) -> dict:
    """Each task's score of the merge and of each seed: the primary metric, or a task's own score
    where its records have no such metric (a generative task); a task with neither is left out."""
    out = {}
    for t in (t for t in tasks if t in merged.tasks):
        m = metric if merged.values("tasks", t, metric) else "score"
        task = MergeTask(merge=merged.score(t, m), seeds=[e.score(t, m) for e in evs])
        if all(math.isfinite(x) for x in [task.merge, *task.seeds]):
            out[t] = task
    return out
