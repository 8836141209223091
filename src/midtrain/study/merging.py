"""`merge_seeds`: average the seeds of an arm into one checkpoint, evaluate it, compare with each seed.

The `merge` stage runs `midtrain.merge.merge_checkpoints` (a streamed fp32 average) on the final
checkpoints of an arm's finished seeds; the `eval` stage then scores the merge on the study's
suite. A merge chain depends on every seed's chain, so the runner runs merge chains after the
runs (`merge_chains`), and `stats/merged.py:compare` reads them back for results.json.

Statistics (the run is the unit of replication, as in the rest of the study): the merge minus
each seed, and the merge minus the mean of the seeds, on the primary score. The interval uses the
study's pooled run-to-run noise (`NoiseFloor.primary_sd`, its degrees of freedom) and treats the
merge as one more run: se = sd x sqrt(1 + 1/n) for the mean of n seeds, sd x sqrt(2) for one seed.
The merge is built from those seeds, so the interval is conservative (docs/merging.md).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from midtrain.io import atomic_write_json, hash_obj, read_json
from midtrain.jobs import Chain, Job, Stage, register
from midtrain.schema import Strict, field
from midtrain.study.config import CONTROL, StudyConfig
from midtrain.study.keep import merge_targets, with_prune
from midtrain.study.layout import MERGE_DIR, MERGE_MODEL, MERGE_RECORD

MODEL, RECORD = MERGE_MODEL, MERGE_RECORD


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
