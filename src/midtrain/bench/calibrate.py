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

import time
from pathlib import Path
from typing import Any

from midtrain.console import err_console
from midtrain.stats.calibrate import CalibrationResult, CalibrationSettings, summarise
from midtrain.study.config import StudyConfig


def study_dicts(base: StudyConfig, shards: dict[str, dict[str, str]], s: CalibrationSettings,
                tokens: int) -> list[dict[str, Any]]:  # study-file data, for parse_study  # fmt: skip
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


def run_calibration(out: Path, s: CalibrationSettings, study: Path | None = None,
                    quick: bool = False, cache: Path | None = None) -> CalibrationResult:  # fmt: skip
    """Shard the base sources, run the A/A studies, count false decisions and misses."""
    from midtrain.data.prepare import shard_store
    from midtrain.data.store import TokenStore
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study, parse_study

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
