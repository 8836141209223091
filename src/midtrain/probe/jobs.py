"""The SFT probe's jobs: after a run is trained and evaluated, fine-tune its final checkpoint on
each SFT set (the `sft` stage: the LR grid, chosen by validation loss), then score the chosen
checkpoint on the base mix's held-out domains (and the tasks with `[sft_probe] tasks = true`)
with the `sft_eval` stage. They are appended to the run's chain, so they are cached, resumed and
run by any executor like the rest of it.

Each probe's folder is `RUN/sft/<set>-s<SFT seed>-<key>`, the key hashing the SFT settings and the
*content* of the set's files: a changed setting or file is a new probe, never a stale cache hit.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from midtrain.errors import MidtrainError
from midtrain.eval.stage import EvalJob
from midtrain.io import hash_file, hash_obj
from midtrain.jobs import Job
from midtrain.probe.config import SftProbeSpec, SftSet
from midtrain.sft.config import SftConfig, SftSettings
from midtrain.sft.stage import SftEvalJob

if TYPE_CHECKING:
    from midtrain.sft.plan import SftPlan
    from midtrain.study.config import StudyConfig

SFT_DIR = "sft"
EVAL_DIR = "eval"


@dataclass(frozen=True)
class ProbeJobs:
    """One fine-tune of one checkpoint on one set (one SFT seed) and the evaluation after it."""

    set: str
    seed: int
    sft: Job
    eval: Job

    @property
    def dir(self) -> Path:
        return Path(self.sft.dir)


@cache
def _file_hash(path: str) -> str:
    return hash_file(path)


def sft_config(cfg: StudyConfig, s: SftSet, checkpoint: str, seed: int) -> SftConfig:
    """The SftConfig of one probe: the study's [sft_probe] settings, the set's files, the run's
    device and threads."""
    probe = cfg.sft_probe
    settings = probe.model_dump(include=set(SftSettings.model_fields))
    return SftConfig(
        **settings, checkpoint=checkpoint, data=s.train, val=s.val, seed=seed,
        device=cfg.train.get("device", "auto"), threads=cfg.train.get("threads", 0),
    )  # fmt: skip


def probe_key(spec: SftConfig, name: str) -> str:
    """What a probe computes, apart from the checkpoint (the run's folder is content-addressed)."""
    ident = {k: v for k, v in spec.identity().items() if k not in ("checkpoint", "data", "val")}
    files = {k: _file_hash(p) for k, p in (("data", spec.data), ("val", spec.val)) if p}
    return hash_obj({"set": name, "settings": ident, "files": files})[:10]


def after_eval(cfg: StudyConfig, base_eval: EvalJob) -> EvalJob:
    """What an SFT'd checkpoint is scored on: the base mix's held-out domains (forgetting), and
    the study's tasks with `[sft_probe] tasks = true`."""
    settings = base_eval.settings
    if not cfg.sft_probe.tasks:
        settings = settings.model_copy(update={"tasks": [], "task_settings": {}})
    domains = {d: cfg.stores[d] for d in sorted(cfg.base) if cfg.base[d] > 0}
    return EvalJob(checkpoint=base_eval.checkpoint, settings=settings, domains=domains)


def probe_jobs(
    cfg: StudyConfig, name: str, checkpoint: str, root: Path, run_seed: int, base_eval: EvalJob
) -> list[ProbeJobs]:
    """Every probe of one checkpoint: each set x each SFT seed (default: the run's seed)."""
    from midtrain.io import slug

    probe: SftProbeSpec | None = cfg.sft_probe
    if probe is None:
        return []
    ev = after_eval(cfg, base_eval)
    out = []
    for s in probe.sets:
        for seed in probe.seeds_for(run_seed):
            spec = sft_config(cfg, s, checkpoint, seed)
            d = root / SFT_DIR / f"{slug(s.name)}-s{seed}-{probe_key(spec, s.name)}"
            sft = Job.of("sft", name, d, spec)
            after = Job.of("sft_eval", name, d / EVAL_DIR, SftEvalJob(sft=str(d), eval=ev))
            out.append(ProbeJobs(s.name, seed, sft, after))
    return out


def plan_probes(cfg: StudyConfig) -> dict[str, SftPlan]:
    """Each set planned on the start checkpoint (every input check of the SFT planner: rows,
    template, seq_len against the model's positions); the token counts of the dry run."""
    from midtrain.sft.plan import plan_sft

    if cfg.sft_probe is None:
        return {}
    first = cfg.sft_probe.seeds_for(cfg.first_seeds[0])[0]
    plans = {}
    for i, s in enumerate(cfg.sft_probe.sets):
        try:
            plans[s.name] = plan_sft(sft_config(cfg, s, cfg.checkpoint, first))
        except MidtrainError as e:
            raise MidtrainError(f"sft_probe.sets[{i}] ({s.name}): {e}") from None
    return plans


def probe_estimate(plan: SftPlan) -> tuple[int, float, float]:
    """(tokens, FLOPs, seconds) of one probe: every LR of the grid, every epoch."""
    from midtrain.train.plan import CPU_FLOPS_PER_THREAD, CUDA_FLOPS, model_flops_per_token

    tokens = plan.summary().train_tokens * plan.cfg.epochs * len(plan.cfg.lrs)
    per_token, _ = model_flops_per_token(plan.model_config, plan.seq_len)
    flops = per_token * tokens
    if plan.device == "cuda":
        rate = CUDA_FLOPS
    else:
        import torch

        rate = CPU_FLOPS_PER_THREAD * (plan.cfg.threads or torch.get_num_threads())
    return tokens, flops, flops / rate
