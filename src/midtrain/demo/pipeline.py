"""`midtrain demo`: a real microanneal study on the generated demo world, on a laptop CPU.

Steps: generate the world -> train a BPE tokenizer -> token stores -> pretrain (or reuse from the
cache) a tiny Llama base on `web` with a constant LR (the stable phase) -> write study.toml -> run the
study (the anneals, a continued-pretraining arm for `math`, then an SFT probe of every run on the
world's SFT sets) -> report -> one integration round of the winners (round-1.toml: web anchor,
a leave-one-out ablation, the round's seeds merged) -> rounds/rounds.md. Every step is content-addressed, so a second `midtrain demo` reuses what is done.
Nothing here decides an outcome: the study measures whatever the world's sources do.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from rich.console import Console

if TYPE_CHECKING:
    from midtrain.data.store import TokenStore
    from midtrain.demo.world import WorldRecord
    from midtrain.study.results import StudyResult
    from midtrain.study.tables import StudyTable

from midtrain.io import atomic_write_json, atomic_write_text, hash_obj, read_json

console = Console(stderr=True)


@dataclass(frozen=True)
class DemoSettings:
    """Budgets of the demo. `quick` is the same study with smaller budgets (tests and CI use it)."""

    scale: float = 1.0  # world size
    vocab_size: int = 1024
    model: dict[str, str | int | float | bool] = field(  # transformers config kwargs
        default_factory=lambda: {
            "model_type": "llama",
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "num_key_value_heads": 4,
            "intermediate_size": 512,
            "max_position_embeddings": 256,
            "tie_word_embeddings": False,
        }
    )
    seq_len: int = 256
    batch_tokens: int = 4096
    micro_batch: int = 16
    base_tokens: int = 2_000_000
    base_lr: float = 3e-3
    anneal_tokens: int = 262_144  # 64 steps of 4096 tokens
    seeds: tuple[int, ...] = (0, 1)
    eval_limit: int = 200
    # the end only, as the library's default: a halfway point too gave the full demo its
    # trajectory but 38% of its time evaluating and ~20 min in all (docs/demo-world.md)
    eval_points: tuple[float, ...] = (1.0,)
    full_run_tokens: int = 2_400_000
    # the SFT probe of every run (the world's SFT sets, docs/demo-world.md#sft-sets)
    sft_sets: tuple[str, ...] = ("facts", "arith", "code")
    sft_lrs: tuple[float, ...] = (3e-4, 1e-3)  # both train on the demo base; each wins on a set
    sft_epochs: int = 1  # 2 would add about 1 min to the full demo (14 runs x 3 sets)
    sft_batch_size: int = 16
    round: bool = True  # after the study: one integration round with an ablation and a merge


FULL = DemoSettings()
QUICK = DemoSettings(
    scale=0.3,
    base_tokens=400_000,
    anneal_tokens=32_768,
    eval_limit=100,
    full_run_tokens=480_000,
    sft_sets=("arith",),
)

CPT_CANDIDATES = {"math"}  # also a continued-pretraining arm (100% candidate, same tokens)
CANDIDATES = [
    ("math", {"math": 1.0}),
    ("code", {"code": 1.0}),
    ("hq", {"hq": 1.0}),
    ("flan", {"flan": 1.0}),
    ("hq+flan", {"hq": 0.5, "flan": 0.5}),  # at fraction 0.3: 70/15/15, as in Olmo's PT/FLAN/HQ
]


class DemoWorld(TypedDict):
    """What `build_world_and_stores` made: the world's record, its folder, the tokenizer, the stores."""

    world: WorldRecord  # world.json as read
    world_dir: Path
    tokenizer: Path
    stores: dict[str, TokenStore]


def default_cache() -> Path:
    return Path(os.environ.get("MIDTRAIN_CACHE", Path.home() / ".cache" / "midtrain"))


def build_world_and_stores(out: Path, s: DemoSettings, seed: int = 0) -> DemoWorld:
    """World, tokenizer and one token store per source (each skipped when already there)."""
    from midtrain.data.prepare import prepare_source
    from midtrain.data.store import TokenStore
    from midtrain.data.tokenizer import load_tokenizer, train_tokenizer
    from midtrain.demo.world import FORMAT as WORLD_FORMAT
    from midtrain.demo.world import generate_world

    world_dir = out / "world"
    meta = world_dir / "world.json"
    if not meta.is_file() or read_json(meta).get("format") != WORLD_FORMAT:  # an older world
        generate_world(world_dir, seed=seed, scale=s.scale)
    world: WorldRecord = read_json(world_dir / "world.json")
    sources = sorted(p.name for p in (world_dir / "sources").iterdir() if p.is_dir())
    files = {name: sorted((world_dir / "sources" / name).glob("*.jsonl")) for name in sources}
    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer.json").is_file():
        train_tokenizer(_texts([f for fs in files.values() for f in fs]), s.vocab_size, tok_dir)
    tok = load_tokenizer(tok_dir)
    stores = {}
    for name in sources:
        sd = out / "stores" / name
        if not (sd / "manifest.json").is_file():
            prepare_source(
                name, files[name], sd, tok, heldout_fraction=0.02, seed=seed, text_field="text"
            )
        stores[name] = TokenStore.open(sd)
    return {"world": world, "world_dir": world_dir, "tokenizer": tok_dir, "stores": stores}


def _texts(files: list[Path]):
    import json

    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                yield json.loads(line)["text"]


def pretrain_base(ctx: DemoWorld, s: DemoSettings, cache: Path) -> Path:
    """The stable-phase base: constant LR on `web`, cached by the content hash of its inputs."""
    from midtrain import train

    web = ctx["stores"]["web"]
    rc = {
        "model": dict(s.model, vocab_size=web.vocab_size),
        "tokenizer": str(ctx["tokenizer"]),
        "stores": {"web": str(web.path)},
        "mix": [{"source": "web", "ratio": 1.0, "max_repetition": 10.0}],
        "tokens": s.base_tokens,
        "seq_len": s.seq_len,
        "batch_tokens": s.batch_tokens,
        "micro_batch": s.micro_batch,
        "seed": 0,
        "schedule": {"name": "constant", "start_lr": s.base_lr, "warmup_steps": 20},
        "checkpoint_every": 100,
    }
    key = hash_obj(
        {
            "web": web.content_hash,
            "tokenizer": web.tokenizer_hash,
            "config": {k: v for k, v in rc.items() if k not in ("stores", "tokenizer")},
        }
    )
    run_dir = cache / "demo-base" / key[:16]
    status = run_dir / "status.json"
    if status.is_file() and read_json(status).get("status") == "done":
        console.print(f"base model: cached at {run_dir / 'final'}")
    else:
        console.print(
            f"base model: pretraining {s.base_tokens:,} tokens on web (constant LR) -> {run_dir}"
        )
        train.run(rc, run_dir, progress=None)
    return run_dir / "final"


def study_file(ctx: DemoWorld, base: Path, s: DemoSettings, out: Path) -> StudyTable:
    """The demo's study as data (paths relative to the study file, so the folder can be moved)."""

    def rel(p: Path) -> str:
        return os.path.relpath(Path(p).resolve(), out.resolve())

    return {
        "name": "demo",
        "checkpoint": str(Path(base).resolve()),
        "tokens": s.anneal_tokens,
        "seq_len": s.seq_len,
        "batch_tokens": s.batch_tokens,
        "micro_batch": s.micro_batch,
        "seeds": list(s.seeds),
        "fractions": [0.3],
        "full_run_tokens": s.full_run_tokens,
        "base_max_repetition": 4.0,
        "stores": {n: rel(st.path) for n, st in sorted(ctx["stores"].items())},
        "base": {"web": 1.0},
        "schedule": {"name": "linear", "final_lr_fraction": 0.0},
        "eval": {
            "tasks": sorted(ctx["world"]["tasks"]),  # the task names (world.yaml is their group)
            "include_path": rel(ctx["world_dir"] / "tasks"),
            "limit": s.eval_limit,
        }
        | ({"points": list(s.eval_points)} if tuple(s.eval_points) != (1.0,) else {}),
        "guards": [{"domain": "web", "tolerance": 0.05}],
        "candidates": [
            {"name": name, "mix": mix, "max_repetition": 8.0}
            | ({"continued_pretraining": True} if name in CPT_CANDIDATES else {})
            for name, mix in CANDIDATES
        ],
        "sft_probe": {
            "lrs": list(s.sft_lrs),
            "epochs": s.sft_epochs,
            "batch_size": s.sft_batch_size,
            "sets": [
                {
                    "name": name,
                    "train": rel(ctx["world_dir"] / "sft" / name / "train.jsonl"),
                    "val": rel(ctx["world_dir"] / "sft" / name / "val.jsonl"),
                }
                for name in s.sft_sets
            ],
        },
    }


def study_toml(ctx: DemoWorld, base: Path, s: DemoSettings, out: Path) -> str:
    """The demo's study file, written by a TOML library (runnable with `midtrain study run`)."""
    import tomli_w

    head = "# The midtrain demo study: written by `midtrain demo`, runnable with `midtrain study run`.\n"
    return head + tomli_w.dumps(study_file(ctx, base, s, out))


def run_demo(
    out: Path,
    *,
    quick: bool = False,
    workers: int = 1,
    cache: Path | None = None,
    settings: DemoSettings | None = None,
) -> StudyResult:
    """Run the whole demo into `out`; returns the study results."""
    from midtrain.driver.runner import run_study
    from midtrain.study.config import load_study

    s = settings or (QUICK if quick else FULL)
    out = Path(out).resolve()
    cache = Path(cache or default_cache()).resolve()
    t0 = time.time()
    console.print(f"[bold]midtrain demo[/] ({'quick' if quick else 'full'}) -> {out}")
    ctx = build_world_and_stores(out, s)
    console.print(
        f"world, tokenizer and {len(ctx['stores'])} token stores ready ({time.time() - t0:.0f}s)"
    )
    base = pretrain_base(ctx, s, cache)
    study_path = out / "study.toml"
    atomic_write_text(study_path, study_toml(ctx, base, s, out))
    atomic_write_json(out / "demo-settings.json", asdict(s))
    results = run_study(load_study(study_path), out / "study", workers=workers)
    if s.round:
        demo_round(out, results, workers)
    console.print(f"demo finished in {time.time() - t0:.0f}s")
    return results


def demo_round(out: Path, results: StudyResult, workers: int = 1, anchor_share: float = 0.4,
               budgets: dict[str, float] | None = None,
               tokens_scale: float | None = None) -> Path | None:  # fmt: skip
    """One integration round from the study's winners with web as the anchor (40%), the source
    of the strongest single-source winner left out in an ablation, and the round's seeds merged.
    Same tokens and seeds as the anneals (unless `tokens_scale`), so the round's control (the
    base mix) is the study's."""
    from midtrain.integrate.propose import propose, write_round
    from midtrain.integrate.report import write
    from midtrain.integrate.run import run_round

    wins = [a for a in results.arms if a.verdict == "include" and not a.cpt and a.primary]
    single = [a for a in wins if len(a.candidate_mix) == 1]
    if not wins:
        console.print("integration round: skipped (no candidate was included)")
        return None
    best = max(single, key=lambda a: a.primary.delta) if single else None
    sources = {s for a in wins for s in a.candidate_mix}
    ablate = list(best.candidate_mix) if best and len(sources) > 1 else []  # else: the control
    path = out / "round-1.toml"
    rnd, notes = propose([out / "study"], out=path, anchor_share=anchor_share, ablate=ablate,
                         budgets=budgets, merge_seeds=True, tokens_scale=tokens_scale)  # fmt: skip
    write_round(rnd, notes, [out / "study"], path)
    run_round(path, out / "rounds", workers=workers)
    return write(out / "rounds")[1]
