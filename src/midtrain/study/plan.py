"""Expand a study into runs: one control per seed plus every (candidate, fraction, seed) arm.

Each run is content-addressed: its id hashes the resolved run config with the *content* hashes of
the checkpoint and stores (not their paths), so the same inputs always map to the same directory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from midtrain.io import hash_obj, hash_tree, read_json
from midtrain.study.config import Candidate, StudyConfig

CONTROL = "control"


@dataclass
class RunSpec:
    """One training run of a study (the control or an arm) and the evaluation of its result."""

    arm: str  # "control" or "<candidate>@<fraction>"
    candidate: str | None
    fraction: float
    seed: int
    mix: list[dict[str, Any]]
    run_config: dict[str, Any]
    run_id: str
    dir: Path
    eval_spec: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.arm}/s{self.seed}"

    def job(self) -> dict[str, Any]:
        """The picklable description an executor runs (see study.executors.run_job)."""
        return {
            "name": self.name,
            "train": self.run_config,
            "dir": str(self.dir),
            "eval": self.eval_spec,
        }


@dataclass
class StudyPlan:
    config: StudyConfig
    out: Path
    runs: list[RunSpec]
    base_eval: dict[str, Any]  # job evaluating the start checkpoint itself (the "before" point)

    def control(self, seed: int) -> RunSpec:
        return next(r for r in self.runs if r.arm == CONTROL and r.seed == seed)

    def arms(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.runs:
            if r.arm != CONTROL:
                seen.setdefault(r.arm, None)
        return list(seen)

    def arm_runs(self, arm: str) -> list[RunSpec]:
        return [r for r in self.runs if r.arm == arm]


@cache
def content_hash(path: str) -> str:
    """Content hash of a checkpoint folder or token store (manifest hash for stores)."""
    manifest = Path(path) / "manifest.json"
    if manifest.is_file():
        m = read_json(manifest)
        return m.get("content_hash") or hash_obj(m)
    return hash_tree(path)


def arm_mix(cfg: StudyConfig, cand: Candidate | None, fraction: float) -> list[dict[str, Any]]:
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
    return [
        {"source": s, "ratio": round(r / total, 12), "max_repetition": reps[s]}
        for s, r in sorted(ratios.items())
    ]


def arm_name(cand: Candidate, fraction: float) -> str:
    return f"{cand.name}@{fraction:g}"


def _run_config(cfg: StudyConfig, mix: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    used = {m["source"] for m in mix}
    rc: dict[str, Any] = {
        "init": cfg.checkpoint,
        "stores": {k: v for k, v in cfg.stores.items() if k in used},
        "mix": mix,
        "tokens": cfg.tokens,
        "seq_len": cfg.seq_len,
        "batch_tokens": cfg.batch_tokens,
        "micro_batch": cfg.micro_batch,
        "seed": seed,
        "schedule": cfg.schedule.model_dump(exclude_none=True),
    }
    rc.update(cfg.train)
    return rc


def _run_id(rc: dict[str, Any]) -> str:
    keyed = dict(rc)
    keyed["init"] = content_hash(rc["init"])
    keyed["stores"] = {k: content_hash(v) for k, v in rc["stores"].items()}
    keyed.pop("threads", None)  # how many threads ran it does not change what it computes
    return hash_obj(keyed)


def eval_spec(cfg: StudyConfig) -> dict[str, Any]:
    return {
        "tasks": list(cfg.eval.tasks),
        "include_path": cfg.eval.include_path,
        "domains": {d: cfg.stores[d] for d in cfg.domain_names},
        "limit": cfg.eval.limit,
        "num_fewshot": cfg.eval.num_fewshot,
        "batch_size": cfg.eval.batch_size,
        "task_settings": {
            t: ts.model_dump(exclude_none=True) for t, ts in sorted(cfg.eval.task_settings.items())
        },
    }


def make_plan(cfg: StudyConfig, out: Path) -> StudyPlan:
    """Expand the study: a control per seed (always), then candidates x fractions x seeds."""
    out = Path(out)
    ev = eval_spec(cfg)
    arms: list[tuple[str, Candidate | None, float]] = [(CONTROL, None, 0.0)]
    for cand in cfg.candidates:
        arms += [(arm_name(cand, f), cand, f) for f in cfg.fractions_for(cand)]
    runs = []
    for arm, cand, frac in arms:
        for seed in cfg.seeds:
            mix = arm_mix(cfg, cand, frac)
            rc = _run_config(cfg, mix, seed)
            rid = _run_id(rc)
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", arm.replace("@", "-").replace("+", "_"))
            run_dir = out / "runs" / f"{slug}-s{seed}-{rid[:10]}"
            runs.append(
                RunSpec(arm, cand.name if cand else None, frac, seed, mix, rc, rid, run_dir, ev)
            )
    base_id = content_hash(cfg.checkpoint)[:10]
    base_eval = {
        "name": "start checkpoint",
        "train": None,
        "dir": str(out / "runs" / f"start-{base_id}"),
        "checkpoint": cfg.checkpoint,
        "eval": ev,
    }
    return StudyPlan(cfg, out, runs, base_eval)
