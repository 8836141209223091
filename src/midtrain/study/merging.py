"""`merge_seeds`: average the seeds of an arm into one checkpoint, evaluate it, compare with each seed.

The `merge` stage runs `midtrain.merge.merge_checkpoints` (a streamed fp32 average) on the final
checkpoints of an arm's finished seeds; the `eval` stage then scores the merge on the study's
suite. A merge chain depends on every seed's chain, so the runner runs merge chains after the
runs (`merge_chains`), and `compare` reads them back for results.json.

Statistics (the run is the unit of replication, as in the rest of the study): the merge minus
each seed, and the merge minus the mean of the seeds, on the primary score. The interval uses the
study's pooled run-to-run noise (`NoiseFloor.primary_sd`, its degrees of freedom) and treats the
merge as one more run: se = sd x sqrt(1 + 1/n) for the mean of n seeds, sd x sqrt(2) for one seed.
The merge is built from those seeds, so the interval is conservative (docs/merging.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from pydantic import BaseModel
from scipy import stats as sps

from midtrain.eval.results import Examples
from midtrain.io import atomic_write_json, hash_obj, read_json
from midtrain.jobs import Chain, Job, Stage, register
from midtrain.schema import Strict, field
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.keep import merge_targets, with_prune
from midtrain.study.results import MergeResult, MergeTask, NoiseFloor

MERGE_DIR = "merges"
MODEL = "model"
RECORD = "merge-job.json"


class MergeSpec(Strict):
    """Checkpoints to average (uniform unless `weights`)."""

    inputs: list[str] = field(description="HF checkpoint folders (same architecture).")
    weights: list[float] | None = field(None, description="One weight per input.")


class MergeJobResult(BaseModel):
    checkpoint: str
    inputs: list[str]
    weights: list[float] | None = None


@register
class MergeStage(Stage):
    name = "merge"
    Spec = MergeSpec
    Result = MergeJobResult

    def run(self, spec: MergeSpec, out: Path) -> MergeJobResult:
        from midtrain.merge import merge_checkpoints

        out.mkdir(parents=True, exist_ok=True)
        merge_checkpoints(spec.inputs, out / MODEL, spec.weights)
        res = MergeJobResult(checkpoint=str(out / MODEL), inputs=spec.inputs, weights=spec.weights)
        atomic_write_json(out / RECORD, res.model_dump(mode="json"))
        return res

    def cached(self, spec: MergeSpec, out: Path) -> MergeJobResult | None:
        rec = out / RECORD
        if not rec.is_file() or not (out / MODEL / "config.json").is_file():
            return None
        res = MergeJobResult.model_validate(read_json(rec))
        return res if res.inputs == spec.inputs and res.weights == spec.weights else None


def merge_arms(cfg: StudyConfig, arms: list[str]) -> list[str]:
    """The arms whose seeds are merged (`merge_seeds = true`: the control and every arm)."""
    if cfg.merge_seeds is True:
        return [CONTROL, *arms]
    return [a for a in [CONTROL, *arms] if a in (cfg.merge_seeds or [])]


def merge_dir(out: Path, arm: str, inputs: list[str]) -> Path:
    from midtrain.io import slug

    return out / MERGE_DIR / f"{slug(arm)}-{hash_obj(inputs)[:10]}"


def merge_chains(plan, done) -> list[Chain]:  # noqa: ANN001 - a StudyPlan; done(RunSpec) -> bool
    """One chain (merge, eval, then its prune job) per merged arm whose runs all finished (two
    at least)."""
    chains = []
    for arm in merge_arms(plan.config, plan.arms()):
        runs = plan.arm_runs(arm) if arm != CONTROL else plan.controls()
        if len(runs) < 2 or not all(done(r) for r in runs):
            continue
        inputs = [str(r.dir / "final") for r in runs]
        mdir = merge_dir(plan.out, arm, inputs)
        ev = plan.eval_job.model_copy(update={"checkpoint": str(mdir / MODEL)})
        chain = [
            Job.of("merge", f"{arm}/merge", mdir, MergeSpec(inputs=inputs)),
            Job.of("eval", f"{arm}/merge", mdir / "eval", ev),
        ]
        targets = merge_targets(plan.config.keep, mdir, inputs)
        chains.append(with_prune(chain, f"{arm}/merge", targets))
    return chains


def compare(plan, finished, tasks: list[str], noise: NoiseFloor | None) -> list[MergeResult]:  # noqa: ANN001
    """Each merged arm against its seeds (missing when a seed or the merge did not finish)."""
    from midtrain.study.analysis import primary_score

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
            q = float(sps.t.ppf(0.5 + cfg.interval_confidence / 2, noise.df))
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
