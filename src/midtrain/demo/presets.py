"""`midtrain demo --preset NAME`: a published protocol end to end on the demo world.

The world's sources play the preset's roles (web the base mix, flan the FLAN-like source, hq the
high-quality web, math, code; the world has no knowledge-QA source). The study is the preset's
own (`midtrain study init --preset`), with the demo's budgets (tokens, eval limit, SFT sets and LR
grid sized for its tiny model) and the demo's full run (`DemoSettings.full_run_tokens`: the base's
stable phase is 5/6 of it). Its tokens are the demo's, not the protocol's share of that run: the
published shares (0.17-0.4% of a run for the microanneals) would be less than one demo step.
liu2025's timing grid starts from the base and from an earlier checkpoint (the base's recipe at
half its tokens), in the `cooldown` starts mode (every start the demo's short anneal) unless
`starts_mode="to_end"` (`--to-end`: each start trains to the end of the demo's full run, as the
paper did; from the early start that is ~9x the demo's anneal); with `quick`, liu2025 keeps two roles (code,
with the weight grid as in the paper, and math) so that it fits a few minutes.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from midtrain.demo.pipeline import (
    DemoSettings,
    DemoWorld,
    build_world_and_stores,
    console,
    default_cache,
    demo_round,
    pretrain_base,
    study_file,
)
from midtrain.design.presets import OLMO3_TOKENS_SCALE
from midtrain.io import atomic_write_text
from midtrain.study.tables import StudyTable

DEMO_ROLES = {"flan": "flan", "hq": "hq", "math": "math", "code": "code"}
QUICK_LIU_ROLES = {"math": "math", "code": "code"}


def preset_demo_study(preset: str, ctx: DemoWorld, base: Path, s: DemoSettings, out: Path,
                      quick: bool, starts: list[str],
                      starts_mode: str = "cooldown") -> StudyTable:  # fmt: skip
    """The preset's study on the demo world (absolute paths), with the demo's budgets."""
    from midtrain.design.presets import PRESETS, preset_study

    demo = study_file(ctx, base, s, out)  # the demo's own study: paths, eval and probe budgets
    roles = QUICK_LIU_ROLES if quick and preset == "liu2025" else DEMO_ROLES
    stores = {n: str(st.path) for n, st in sorted(ctx["stores"].items())}
    sets = [{"name": x["name"], "train": str((out / x["train"]).resolve()),
             "val": str((out / x["val"]).resolve())} for x in demo["sft_probe"]["sets"]]  # fmt: skip
    study = preset_study(
        preset, checkpoint=str(base), stores=stores, base={"web": 1.0}, roles=roles,
        tasks=demo["eval"]["tasks"], sft=sets, starts=starts, tokens=s.anneal_tokens,
        full_run_tokens=s.full_run_tokens, starts_mode=starts_mode,
    )  # fmt: skip
    study |= {k: demo[k] for k in ("seq_len", "batch_tokens", "micro_batch")}
    study["eval"] |= {"include_path": str((out / demo["eval"]["include_path"]).resolve()),
                      "limit": s.eval_limit}  # fmt: skip
    study["guards"] = demo["guards"]  # the demo's own tolerance on web, for its tiny model
    if PRESETS[preset].sft:
        study["sft_probe"] |= {k: demo["sft_probe"][k] for k in ("lrs", "epochs", "batch_size")}
    return study


def early_start(ctx: DemoWorld, s: DemoSettings, cache: Path) -> Path:
    """The base's recipe stopped at half its tokens: an earlier point of the stable phase."""
    return pretrain_base(ctx, dataclasses.replace(s, base_tokens=s.base_tokens // 2), cache)


def run_preset_demo(out: Path, preset: str, *, quick: bool = False, workers: int = 1,
                    cache: Path | None = None, settings: DemoSettings | None = None,
                    starts_mode: str = "cooldown") -> Path:  # fmt: skip
    """Run the preset on the demo world into `out`; returns the study file it wrote."""
    from midtrain.demo.pipeline import FULL, QUICK
    from midtrain.design.preset_file import preset_text
    from midtrain.design.presets import PRESETS
    from midtrain.study.config import load_study

    if preset not in PRESETS:
        from midtrain.errors import MidtrainError

        raise MidtrainError(f"--preset {preset!r}: unknown; use one of {', '.join(PRESETS)}")
    s = settings or (QUICK if quick else FULL)
    out, cache = Path(out).resolve(), Path(cache or default_cache()).resolve()
    t0 = time.time()
    console.print(
        f"[bold]midtrain demo --preset {preset}[/] ({'quick' if quick else 'full'}) -> {out}"
    )
    ctx = build_world_and_stores(out, s)
    base = pretrain_base(ctx, s, cache)
    starts = [str(early_start(ctx, s, cache))] if preset == "liu2025" else []
    study = preset_demo_study(preset, ctx, base, s, out, quick, starts, starts_mode)
    roles = QUICK_LIU_ROLES if quick and preset == "liu2025" else DEMO_ROLES
    path = out / f"{preset}.toml"
    atomic_write_text(path, preset_text(preset, study, path, roles))
    cfg = load_study(path)
    if cfg.starts:
        from midtrain.design.grid import run_grid

        run_grid(cfg, out / "study", workers=workers)
    else:
        from midtrain.driver.runner import run_study

        results = run_study(cfg, out / "study", workers=workers)
        if preset == "olmo3":  # the protocol's integration round of the winners, seeds merged,
            demo_round(out, results, workers, anchor_share=0.33,  # at 10x the anneals' tokens
                       budgets={"code": 0.2, "math": 0.2}, tokens_scale=OLMO3_TOKENS_SCALE)  # fmt: skip
    console.print(f"demo --preset {preset} finished in {time.time() - t0:.0f}s")
    return path
