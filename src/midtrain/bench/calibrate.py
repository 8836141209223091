"""`midtrain bench calibrate`: A/A studies, whose candidates cannot help or hurt, decided as usual.

Every source of the base mix is split into disjoint document shards (`data.prepare.shard_store`);
candidate k mixes shard k of every base source at the base's own ratios, so an arm is the base mix
itself drawn from other documents: its true effect on every task and domain is zero. Several
independent studies (disjoint seeds) each run the control and all null arms; every include or
reject is a false decision, and every interval that misses 0 a miss.

By default on the demo world (its cached base model); `--study FILE` takes a user's study file
(its checkpoint, stores, base mix, budget, schedule and eval; its candidates are ignored).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel
from scipy import stats as sps

from midtrain.console import err_console
from midtrain.study.config import StudyConfig
from midtrain.study.results import ArmResult, StudyResult


class CalibrationSettings(BaseModel):
    studies: int = 4
    shards: int = 10
    seeds: int = 2
    fractions: list[float] = [0.3]  # every null candidate at each of these shares
    cpt: bool = False  # also every null candidate's continued-pretraining arm (100% a base shard)
    paired: bool = True  # study paired_streams (common random numbers)
    first_seed: int = 0  # seeds of study i: first_seed + i * seeds ...
    reuse: list[str] = []  # study folders whose identical finished runs are linked
    guards: bool = False  # a guard on every base domain (tolerance guard_tolerance bpb)
    guard_tolerance: float = 0.01
    auto_seeds: bool = False  # seeds = "auto" up to max_seeds (group-sequential looks)
    max_seeds: int = 3
    select: str = "all"  # eval.select: all | snr
    correction: str = "holm"
    tokens: int | None = None  # per run (default: half the demo's anneal, or the study file's)
    eval_limit: int | None = None  # examples per task (default: 100 on the demo world)
    workers: int = 1


class Rate(BaseModel):
    """k events in n trials, with a 95% Clopper-Pearson interval (Monte-Carlo error)."""

    k: int
    n: int
    rate: float | None
    ci: list[float] | None


def rate(k: int, n: int) -> Rate:
    if n == 0:
        return Rate(k=0, n=0, rate=None, ci=None)
    lo = 0.0 if k == 0 else float(sps.beta.ppf(0.025, k, n - k + 1))
    hi = 1.0 if k == n else float(sps.beta.ppf(0.975, k + 1, n - k))
    return Rate(k=k, n=n, rate=k / n, ci=[lo, hi])


class DesignRate(BaseModel):
    """False decisions and primary coverage of the null arms of one design."""

    null_arms: int
    false_decisions: int
    false_decision_rate: Rate
    coverage: Rate
    domain_coverage: Rate
    sphericity: list[float | None]  # per study
    correlation: list[float | None]  # arm-control correlation of the primary, per study
    # pooled over studies (mean squares), far less noisy than one study's 2-seed values
    pooled_sphericity: float | None = None
    pooled_correlation: float | None = None
    diff_sd: float | None = None  # sd of arm - control over seeds
    median_half_width: float | None = None  # of the arms' primary intervals
    mde_2_seeds: float | None = None  # the primary's minimum detectable effect at 2 seeds


class CalibrationResult(BaseModel):
    null_arms: int
    false_decisions: int
    false_include: int
    false_reject: int
    false_decision_rate: Rate
    false_decision_bootstrap: list[float] | None = None  # 95% cluster bootstrap over studies
    familywise: Rate | None = None  # studies with at least one false decision
    designs: dict[str, DesignRate] = {}
    settings: dict[str, Any] = {}
    coverage: Rate  # primary intervals that contain 0
    task_coverage: Rate  # per-task intervals (primary metric) that contain 0
    acc_coverage: Rate  # per-task accuracy intervals that contain 0
    domain_coverage: Rate  # per-domain bits-per-byte intervals that contain 0
    nominal: float  # the stated error rate: 1 - confidence
    run_sd: list[float | None]  # each study's pooled run-to-run sd of the primary
    studies: int
    shards: int
    seeds: int
    tokens: int
    wall_s: float
    note: str = (
        "null arms of one study share its control runs, so their decisions are correlated; "
        "studies are independent (disjoint seeds)"
    )


def study_dicts(base: StudyConfig, shards: dict[str, dict[str, str]], s: CalibrationSettings,
                tokens: int) -> list[dict[str, Any]]:  # fmt: skip
    """The A/A studies as study-file data: the base config with null candidates and own seeds.

    `shards` maps each base source to its shard stores ({name: folder}, in shard order).
    """
    data = base.model_dump(mode="json", exclude={"candidates", "seeds", "fractions", "guards"})
    stores = dict(data["stores"])
    for paths in shards.values():
        stores |= paths
    shard_names = {src: list(paths) for src, paths in shards.items()}
    cands = [
        {
            "name": f"null{k}",
            "mix": {names[k]: base.base[src] for src, names in shard_names.items()},
            "continued_pretraining": s.cpt,
        }
        for k in range(s.shards)
    ]
    out = []
    for i in range(s.studies):
        first = s.first_seed + i * (s.max_seeds if s.auto_seeds else s.seeds)
        d = dict(data, name=f"aa{i}", stores=stores, tokens=tokens, candidates=cands,
                 fractions=list(s.fractions), seeds=list(range(first, first + s.seeds)),
                 paired_streams=s.paired, reuse=[f"{r}/aa{i}" for r in s.reuse])  # fmt: skip
        d["eval"] = dict(d["eval"], domains=sorted(base.stores), select=s.select)
        if s.eval_limit:
            d["eval"]["limit"] = s.eval_limit
        d["analysis"] = dict(d.get("analysis") or {}, correction=s.correction)
        if s.auto_seeds:
            d["seeds"] = "auto"
            d["analysis"]["max_seeds"] = s.max_seeds
        if s.guards:
            d["guards"] = [{"domain": src, "tolerance": s.guard_tolerance} for src in base.base]
        out.append(d)
    return out


def _covers(ci: list[float] | None) -> bool:
    return ci is not None and all(math.isfinite(c) for c in ci) and ci[0] <= 0 <= ci[1]


def _design(a: ArmResult) -> str:
    return "cpt" if a.cpt else f"{a.fraction:g}"


def summarise(results: list[StudyResult], s: CalibrationSettings, tokens: int,
              wall: float) -> CalibrationResult:  # fmt: skip
    arms = [a for r in results for a in r.arms if a.primary is not None]
    inc = sum(a.verdict == "include" for a in arms)
    rej = sum(a.verdict == "reject" for a in arms)
    tasks = [t for a in arms for t in a.tasks.values()]
    doms = [d for a in arms for d in a.domains.values()]
    per_study = [[a.verdict in ("include", "reject") for a in r.arms if a.primary] for r in results]
    return CalibrationResult(
        null_arms=len(arms), false_decisions=inc + rej, false_include=inc, false_reject=rej,
        false_decision_rate=rate(inc + rej, len(arms)),
        false_decision_bootstrap=cluster_bootstrap(per_study),
        familywise=rate(sum(any(x) for x in per_study), len(per_study)),
        designs=_designs(results),
        coverage=rate(sum(_covers(a.primary.ci) for a in arms), len(arms)),
        task_coverage=rate(sum(_covers(t.ci) for t in tasks), len(tasks)),
        acc_coverage=rate(sum(_covers(t.acc_ci) for t in tasks if t.acc_ci), sum(1 for t in tasks if t.acc_ci)),
        domain_coverage=rate(sum(_covers(d.ci) for d in doms), len(doms)),
        nominal=round(1 - results[0].confidence, 6) if results else 0.05,
        run_sd=[r.control.noise_floor.primary_sd if r.control.noise_floor else None for r in results],
        studies=s.studies, shards=s.shards, seeds=s.seeds, tokens=tokens, wall_s=round(wall, 1),
        settings=s.model_dump(),
    )  # fmt: skip


def _designs(results: list[StudyResult]) -> dict[str, DesignRate]:
    out: dict[str, DesignRate] = {}
    keys = sorted({_design(a) for r in results for a in r.arms if a.primary})
    for key in keys:
        arms = [a for r in results for a in r.arms if a.primary and _design(a) == key]
        false = sum(a.verdict in ("include", "reject") for a in arms)
        doms = [d for a in arms for d in a.domains.values()]
        pairs = [r.method.pairing.get(key) for r in results]
        pooled = _pooled(pairs, results[0].confidence if results else 0.95)
        out[key] = DesignRate(
            null_arms=len(arms), false_decisions=false, false_decision_rate=rate(false, len(arms)),
            coverage=rate(sum(_covers(a.primary.ci) for a in arms), len(arms)),
            domain_coverage=rate(sum(_covers(d.ci) for d in doms), len(doms)),
            sphericity=[p.sphericity if p else None for p in pairs],
            correlation=[p.correlation if p else None for p in pairs],
            median_half_width=float(np.median([(a.primary.ci[1] - a.primary.ci[0]) / 2
                                               for a in arms if a.primary.ci])) if arms else None,
            **pooled,
        )  # fmt: skip
    return out


def _pooled(pairs: list, confidence: float) -> dict[str, float | None]:
    """Sphericity, correlation, diff sd and 2-seed MDE from the studies' mean squares."""
    from midtrain.stats.contrast import mde_factor

    ok = [p for p in pairs if p and p.diff_sd is not None and p.run_sd]
    if not ok:
        return {}
    ac = float(np.mean([p.diff_sd**2 for p in ok]))
    one = float(np.mean([p.run_sd**2 for p in ok]))
    aa = [p.arm_arm_sd**2 for p in ok if p.arm_arm_sd is not None]
    arms = max(p.arms for p in ok)
    return {
        "pooled_sphericity": ac / float(np.mean(aa)) if aa and np.mean(aa) > 0 else None,
        "pooled_correlation": 1 - ac / (2 * one),
        "diff_sd": math.sqrt(ac),
        # mde_factor is in units of one run's noise s with var(arm - control) = 2 s^2
        "mde_2_seeds": mde_factor(arms, 2, confidence) * math.sqrt(ac / 2),
    }


def cluster_bootstrap(per_study: list[list[bool]], resamples: int = 2000,
                      seed: int = 0) -> list[float] | None:  # fmt: skip
    """A 95% percentile interval of the per-arm false-decision rate resampling whole studies (the
    arms of a study share its control, so their decisions are not independent)."""
    if len(per_study) < 2 or not any(per_study):
        return None
    rng = np.random.default_rng(seed)
    k = np.array([sum(x) for x in per_study], dtype=float)
    n = np.array([len(x) for x in per_study], dtype=float)
    idx = rng.integers(0, len(per_study), size=(resamples, len(per_study)))
    rates = k[idx].sum(axis=1) / np.maximum(n[idx].sum(axis=1), 1)
    return [float(np.quantile(rates, 0.025)), float(np.quantile(rates, 0.975))]


def run_calibration(out: Path, s: CalibrationSettings, study: Path | None = None,
                    quick: bool = False, cache: Path | None = None) -> CalibrationResult:  # fmt: skip
    """Shard the base sources, run the A/A studies, count false decisions and misses."""
    from midtrain.data.prepare import shard_store
    from midtrain.data.store import TokenStore
    from midtrain.study.config import load_study, parse_study
    from midtrain.study.runner import run_study

    t0 = time.time()
    out = Path(out).resolve()
    base = load_study(study) if study else _demo_study(out / "demo", quick, cache, s)
    tokens = s.tokens or base.tokens
    shards: dict[str, dict[str, str]] = {}
    for src in sorted(base.base):
        store = TokenStore.open(base.stores[src])
        root = out / "shards" / src
        names = [f"{store.name}-shard{k}" for k in range(s.shards)]
        if not all((root / n / "manifest.json").is_file() for n in names):
            shard_store(store, s.shards, root)
        shards[src] = {f"{src}-shard{k}": str(root / n) for k, n in enumerate(names)}
    results = []
    for i, data in enumerate(study_dicts(base, shards, s, tokens)):
        err_console.print(f"calibration study {i + 1}/{s.studies}: seeds {data['seeds']}")
        cfg = parse_study(data, source=f"calibration study {i}")
        results.append(run_study(cfg, out / f"aa{i}", workers=s.workers))
    return summarise(results, s, tokens, time.time() - t0)


def _demo_study(root: Path, quick: bool, cache: Path | None, s: CalibrationSettings) -> StudyConfig:
    """The demo world's study (its world, stores and cached base), at half the demo's budget."""
    from midtrain.demo.pipeline import (
        FULL,
        QUICK,
        build_world_and_stores,
        default_cache,
        pretrain_base,
        study_file,
    )
    from midtrain.study.config import parse_study

    settings = QUICK if quick else FULL
    ctx = build_world_and_stores(root, settings)
    ckpt = pretrain_base(ctx, settings, Path(cache or default_cache()).resolve())
    data = study_file(ctx, ckpt, settings, root)
    data.pop("sft_probe", None)  # A/A calibration checks the task verdicts; no SFT probes
    data["tokens"] = s.tokens or max(settings.batch_tokens, settings.anneal_tokens // 2)
    data["eval"]["limit"] = s.eval_limit or min(100, settings.eval_limit)
    return parse_study(data, source="demo study", base_dir=root)
