"""Expand a study into runs: one control per seed plus every (candidate, fraction, seed) arm.

Each run is content-addressed: its id hashes the resolved run config with the *content* hashes of
the checkpoint and stores (not their paths), so the same inputs always map to the same directory.
Each run becomes a chain of jobs (train, then evaluate its final checkpoint, then the SFT probe's
jobs of `probe/jobs.py`); the start checkpoint is evaluated too (the "before" point of every
cooldown). A candidate with `continued_pretraining = true` adds the arm `NAME@cpt`: 100% candidate
data for the same tokens and schedule. With `[train] command` the train job is the
`external_train` stage (train/external.py): the user's trainer, the same `RunResult` after it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from midtrain.errors import MidtrainError
from midtrain.eval.stage import EvalJob
from midtrain.io import hash_obj, hash_tree, read_json, slug
from midtrain.jobs import Chain, Job
from midtrain.mix.sampler import allocate
from midtrain.mix.spec import MixComponent
from midtrain.probe.jobs import ProbeJobs, probe_jobs
from midtrain.study.config import CONTROL, Candidate, StudyConfig
from midtrain.study.keep import PruneSpec, PruneTarget, probe_targets, run_targets, with_prune
from midtrain.study.layout import POINT_EVALS
from midtrain.study.merging import merge_arms
from midtrain.train.config import RunConfig, load_run_config, point_steps
from midtrain.train.external import SPEC_FORMAT, ExternalSpec
from midtrain.train.loop import point_dir

if TYPE_CHECKING:
    from midtrain.data.store import TokenStore

EVAL_DIR = "eval"
CPT = "cpt"  # the arm suffix of continued pretraining: NAME@cpt


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study (the control or an arm) and the evaluation of its result."""

    arm: str  # "control" or "<candidate>@<fraction>"
    candidate: str | None
    fraction: float
    seed: int
    mix: list[MixComponent]
    run_config: RunConfig
    run_id: str
    dir: Path
    probes: list[ProbeJobs] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)  # eval points before the end
    external: ExternalSpec | None = None  # [train] command: trained by it, not midtrain's loop

    @property
    def name(self) -> str:
        return f"{self.arm}/s{self.seed}"

    @property
    def eval_dir(self) -> Path:
        return self.dir / EVAL_DIR

    @property
    def cpt(self) -> bool:
        return self.arm.endswith("@" + CPT)

    def chain(self, ev: EvalJob) -> Chain:
        """Train, then evaluate the final checkpoint."""
        spec = ev.model_copy(update={"checkpoint": str(self.dir / "final")})
        train = (Job.of("train", self.name, self.dir, self.run_config) if self.external is None
                 else Job.of("external_train", self.name, self.dir, self.external))  # fmt: skip
        return [
            train,
            Job.of("eval", self.name, self.eval_dir, spec),
        ]

    def point_eval_dir(self, step: int) -> Path:
        return self.dir / POINT_EVALS / f"step-{step}"

    def point_jobs(self, ev: EvalJob) -> Chain:
        """Each eval point's weights evaluated as the final checkpoint is (same tasks, limits,
        domains), then a prune job that deletes those weights (their records stay)."""
        if not self.points:
            return []
        jobs = [Job.of("eval", f"{self.name} @{p.fraction:g}", self.point_eval_dir(p.step),
                       ev.model_copy(update={"checkpoint": str(point_dir(self.dir, p.step))}))
                for p in self.points]  # fmt: skip
        target = PruneTarget(kind="points", dir=str(self.dir), level="none",
                             policy="[eval] points: deleted once evaluated")  # fmt: skip
        return jobs + [Job.of("prune", self.name, self.dir, PruneSpec(targets=[target]))]

    def full_chain(self, ev: EvalJob) -> Chain:
        """The chain, the eval points, then each SFT probe and the evaluation after it."""
        probes = [j for p in self.probes for j in (p.sft, p.eval)]
        return self.chain(ev) + self.point_jobs(ev) + probes


@dataclass(frozen=True)
class Point:
    """An eval point of a run: the fraction of its tokens and the step its weights are from."""

    fraction: float
    step: int

    def tokens(self, batch_tokens: int) -> int:
        return self.step * batch_tokens


@dataclass
class StudyPlan:
    config: StudyConfig
    out: Path
    runs: list[RunSpec]
    eval_job: EvalJob  # what every run's final checkpoint is scored on
    start_dir: Path  # where the start checkpoint's own evaluation goes
    start_probes: list[ProbeJobs] = field(default_factory=list)  # [sft_probe] start = true

    def control(self, seed: int) -> RunSpec:
        return next(r for r in self.runs if r.arm == CONTROL and r.seed == seed)

    def controls(self) -> list[RunSpec]:
        return [r for r in self.runs if r.arm == CONTROL]

    def arms(self) -> list[str]:
        return list(dict.fromkeys(r.arm for r in self.runs if r.arm != CONTROL))

    def arm_runs(self, arm: str) -> list[RunSpec]:
        return [r for r in self.runs if r.arm == arm]

    def start_chain(self) -> Chain:
        spec = self.eval_job.model_copy(update={"checkpoint": self.config.checkpoint})
        return [Job.of("eval", "start checkpoint", self.start_dir / EVAL_DIR, spec)]

    def chains(self) -> list[Chain]:
        """Each chain ends with the prune job of the folders it wrote (study/keep.py)."""
        keep, merged = self.config.keep, set(merge_arms(self.config, self.arms()))
        start = self.start_chain() + [j for p in self.start_probes for j in (p.sft, p.eval)]
        chains = [with_prune(start, "start checkpoint",
                             probe_targets(keep, [p.dir for p in self.start_probes]))]  # fmt: skip
        for r in self.runs:
            targets = run_targets(keep, r.dir, [p.dir for p in r.probes], r.arm in merged)
            chains.append(with_prune(r.full_chain(self.eval_job), r.name, targets))
        return chains


@cache
def content_hash(path: str) -> str:
    """Content hash of a checkpoint folder or token store (manifest hash for stores)."""
    manifest = Path(path) / "manifest.json"
    if manifest.is_file():
        m = read_json(manifest)
        return m.get("content_hash") or hash_obj(m)
    return hash_tree(path)


def arm_mix(cfg: StudyConfig, cand: Candidate | None, fraction: float) -> list[MixComponent]:
    """The arm's mixture: (1 - f) x base + f x candidate, ratios merged per source."""
    ratios: dict[str, float] = {}
    reps: dict[str, float] = {}
    parts = [(cfg.base, 1.0 - fraction, cfg.base_max_repetition)]
    if cand is not None:
        parts.append((cand.mix, fraction, cand.max_repetition))
    for mix, weight, rep in parts:
        for src, r in mix.items():
            if r * weight <= 0:
                continue
            ratios[src] = ratios.get(src, 0.0) + r * weight
            reps[src] = max(reps.get(src, 1.0), rep)
    total = sum(ratios.values())
    reps |= {s: cap for s, cap in cfg.source_max_repetition.items() if s in reps}
    return [
        MixComponent(source=s, ratio=round(r / total, 12), max_repetition=reps[s])
        for s, r in sorted(ratios.items())
    ]


def cap_field(cfg: StudyConfig, cand: Candidate | None, fraction: float, source: str) -> str:
    """The study field that sets `source`'s repetition cap in an arm (as `arm_mix` merges them):
    source_max_repetition, else the larger of base_max_repetition and the candidate's."""
    if source in cfg.source_max_repetition:
        return f"source_max_repetition.{source}"
    caps = []
    if source in cfg.base and cfg.base[source] * (1.0 - fraction) > 0:
        caps.append((cfg.base_max_repetition, "base_max_repetition"))
    if cand is not None and cand.mix.get(source, 0.0) * fraction > 0:
        i = next(i for i, c in enumerate(cfg.candidates) if c.name == cand.name)
        caps.append((cand.max_repetition, f"candidates[{i}].max_repetition"))
    return max(caps, key=lambda c: c[0])[1] if caps else "base_max_repetition"


def _overflow(
    mix: list[MixComponent], windows: dict[str, int], sequences: int
) -> MixComponent | None:
    """The first source of `mix` that `sequences` would repeat beyond its cap (the sampler's
    allocation, mix/sampler.py), or None when every source fits."""
    counts = allocate([m.ratio for m in mix], sequences)
    for m, n in zip(mix, counts, strict=True):
        if n and n > math.floor(m.max_repetition * windows[m.source] + 1e-9):
            return m
    return None


def max_tokens(mix: list[MixComponent], windows: dict[str, int], seq_len: int,
               batch_tokens: int) -> int:  # fmt: skip
    """The most anneal tokens (whole optimizer steps of `batch_tokens`) for which every source
    of `mix` stays within its repetition cap; `windows`: each source's `seq_len` windows."""
    seqs = batch_tokens // seq_len
    bound = min(
        (math.floor(m.max_repetition * windows[m.source] + 1e-9) + 1) / m.ratio
        for m in mix
        if m.ratio > 0
    )
    steps = int(bound // seqs)
    while steps > 0 and _overflow(mix, windows, steps * seqs) is not None:
        steps -= 1
    return steps * batch_tokens


def study_max_tokens(cfg: StudyConfig, stores: dict[str, TokenStore]) -> int:
    """The most anneal tokens every arm's sources allow within their caps (`max_tokens`)."""
    seq_len = int(cfg.train.get("seq_len", cfg.seq_len))  # [train] may set the geometry
    batch_tokens = int(cfg.train.get("batch_tokens", cfg.batch_tokens))
    limits = []
    for _, cand, frac in arm_list(cfg):
        mix = arm_mix(cfg, cand, frac)
        windows = {m.source: stores[m.source].windows(seq_len) for m in mix}
        limits.append(max_tokens(mix, windows, seq_len, batch_tokens))
    return min(limits)


def check_budget(cfg: StudyConfig, runs: list[RunSpec], stores: dict[str, TokenStore]) -> None:
    """Every arm's sources hold its tokens x their ratio within their caps: checked by the study,
    whose error names the study field to change (the run planner would name its `mix[i]`)."""
    cands = {c.name: c for c in cfg.candidates}
    for r in {r.arm: r for r in runs}.values():
        rc = r.run_config
        if rc.batch_tokens % rc.seq_len:
            return  # the run planner names batch_tokens
        seqs = rc.tokens // rc.batch_tokens * (rc.batch_tokens // rc.seq_len)
        windows = {m.source: stores[m.source].windows(rc.seq_len) for m in r.mix}
        if (m := _overflow(r.mix, windows, seqs)) is None:
            continue
        w = windows[m.source]
        if w == 0:
            raise MidtrainError(
                f"stores.{m.source}: {stores[m.source].n_train_tokens} training tokens, less "
                f"than one sequence of seq_len {rc.seq_len}; add data or leave it out"
            )
        n = allocate([c.ratio for c in r.mix], seqs)[r.mix.index(m)]
        where = cap_field(cfg, cands.get(r.candidate or ""), r.fraction, m.source)
        limit = study_max_tokens(cfg, stores)
        lower = f"lower tokens to {limit:,} or less (what every arm allows), " if limit else ""
        raise MidtrainError(
            f"{where}: arm {r.arm} needs {n * rc.seq_len:,} tokens of {m.source!r}, {n / w:.3f} "
            f"epochs of its {w * rc.seq_len:,}, but the cap is {m.max_repetition:g}; {lower}"
            f"raise {where} to >= {math.ceil(n / w * 1000) / 1000:g}, or add data"
        )


RUN_TO_STUDY = {"init": "checkpoint", "tokenizer": "checkpoint", "seed": "seeds",
                "save_points": "eval.points"}  # fmt: skip
_RUN_FIELD = re.compile(r"(?:run config: )?([A-Za-z_][\w.]*(?:\[\d+\][\w.]*)*): (.*)", re.S)


def study_error(cfg: StudyConfig, run: RunSpec | None, message: str) -> str:
    """An error of a run config built from the study, naming the study field the user wrote:
    `init` is `checkpoint`, a `mix[i]` is its store, a field from [train] is `train.NAME`."""
    arm = f"arm {run.arm}: " if run is not None else ""
    m = _RUN_FIELD.fullmatch(message)
    if m is None:
        return f"{arm}{message}"
    path, rest = m.groups()
    head = re.split(r"[.\[]", path, maxsplit=1)[0]
    tail = path[len(head) :]
    index = re.match(r"\[(\d+)\]", tail)
    if head == "mix" and run is not None and index and int(index.group(1)) < len(run.mix):
        return f"stores.{run.mix[int(index.group(1))].source}: {arm}{rest}"
    if head in cfg.train:
        return f"train.{path}: {rest}"
    return f"{RUN_TO_STUDY.get(head, head)}{tail}: {rest}"


def arm_name(cand: Candidate, fraction: float) -> str:
    return f"{cand.name}@{fraction:g}"


def arm_list(cfg: StudyConfig) -> list[tuple[str, Candidate | None, float]]:
    """(arm, candidate, fraction) of the control and every arm, in the study file's order; a
    continued-pretraining arm is the candidate at fraction 1 (no base mix)."""
    arms: list[tuple[str, Candidate | None, float]] = [(CONTROL, None, 0.0)]
    for cand in cfg.candidates:
        arms += [(arm_name(cand, f), cand, f) for f in cfg.fractions_for(cand)]
        if cand.continued_pretraining:
            arms.append((f"{cand.name}@{CPT}", cand, 1.0))
    return arms


def _run_config(cfg: StudyConfig, mix: list[MixComponent], seed: int, paired: bool = False) -> dict:
    used = {m.source for m in mix}
    rc = {
        "init": cfg.checkpoint,
        "stores": {k: v for k, v in cfg.stores.items() if k in used},
        "mix": [m.model_dump() for m in mix],
        "tokens": cfg.tokens,
        "seq_len": cfg.seq_len,
        "batch_tokens": cfg.batch_tokens,
        "micro_batch": cfg.micro_batch,
        "seed": seed,
        "schedule": cfg.schedule.model_dump(exclude_none=True),
    }
    if paired:  # the arm shares its control's stream (common random numbers)
        rc["pair_base"] = {k: v for k, v in sorted(cfg.base.items()) if v > 0}
    if before := cfg.eval.point_fractions[:-1]:  # absent without points: ids as before them
        rc["save_points"] = before
    rc.update(cfg.run_overrides)
    return rc


def run_points(rc: RunConfig) -> list[Point]:
    """The run's eval points before its end, with the step each falls on."""
    fracs = rc.save_points or []
    return [Point(f, k) for f, k in zip(fracs, point_steps(fracs, rc.tokens // rc.batch_tokens),
                                        strict=True)]  # fmt: skip


def _run_id(rc: dict, command: str | list[str] | None = None) -> str:
    keyed = dict(rc)
    if command is not None:  # an external trainer: its command and spec format are inputs too
        keyed["external"] = {"command": command, "spec": SPEC_FORMAT}
    keyed["init"] = content_hash(rc["init"])
    keyed["stores"] = {k: content_hash(v) for k, v in rc["stores"].items()}
    keyed.pop("threads", None)  # how many threads ran it does not change what it computes
    keyed.pop("trackers", None)  # nor where its metrics are also logged
    keyed.pop("parallel", None)  # nor how many processes shared it (docs/scaling.md)
    return hash_obj(keyed)


def eval_job(cfg: StudyConfig) -> EvalJob:
    settings = cfg.eval.model_dump(exclude={"domains", "select", "select_from", "points"})
    return EvalJob(
        checkpoint=cfg.checkpoint,
        settings=settings,
        domains={d: cfg.stores[d] for d in cfg.domain_names},
    )


def arm_names(cfg: StudyConfig) -> list[str]:
    """The control and every (candidate, fraction) and continued-pretraining arm, in order."""
    return [arm for arm, _, _ in arm_list(cfg)]


def make_plan(cfg: StudyConfig, out: Path, seeds: dict[str, list[int]] | None = None) -> StudyPlan:
    """Expand the study: a control per seed (always), then candidates x fractions x seeds.

    `seeds` gives an arm's own seeds (seeds = "auto" adds seeds to inconclusive arms only);
    by default every arm and the control run the study's first seeds.
    """
    out, ev = Path(out), eval_job(cfg)
    runs = []
    for arm, cand, frac in arm_list(cfg):
        for seed in (seeds or {}).get(arm, cfg.first_seeds):
            mix = arm_mix(cfg, cand, frac)
            paired = cfg.paired_streams and cand is not None and not arm.endswith("@" + CPT)
            paired = paired and cfg.command is None  # an external trainer draws its own order
            rc = _run_config(cfg, mix, seed, paired)
            rid = _run_id(rc, cfg.command)
            run_dir = out / "runs" / f"{slug(arm)}-s{seed}-{rid[:10]}"
            name = f"{arm}/s{seed}"
            probes = probe_jobs(cfg, name, str(run_dir / "final"), run_dir, seed, ev)
            cand_name = cand.name if cand else None
            run_cfg = load_run_config(rc)
            ext = None if cfg.command is None else ExternalSpec(
                run=run_cfg, command=cfg.command, cwd=cfg.base_dir)  # fmt: skip
            runs.append(RunSpec(arm, cand_name, frac, seed, mix, run_cfg, rid, run_dir, probes,
                                run_points(run_cfg), ext))  # fmt: skip
    start_dir = out / "runs" / f"start-{content_hash(cfg.checkpoint)[:10]}"
    start_probes = []
    if cfg.sft_probe is not None and cfg.sft_probe.start:
        first = cfg.first_seeds[0]
        start_probes = probe_jobs(cfg, "start checkpoint", cfg.checkpoint, start_dir, first, ev)
    return StudyPlan(cfg, out, runs, ev, start_dir, start_probes)
