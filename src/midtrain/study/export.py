"""Export a study's runs for other trainers: `midtrain study export STUDY --format ...`.

Every run of a planned study (a TOML file) or a finished one (its folder's study.json) — the
control and every arm, each seed — becomes its mix as token shares of the run plus its schedule:

- `megatron`: one line of Megatron-LM arguments per run: `--data-path W1 PREFIX1 W2 PREFIX2 ...`
  (what `megatron.core.datasets.utils.get_blend_from_list` parses; weights are the token shares)
  and the schedule as `--train-iters`, `--lr`, `--min-lr`, `--lr-decay-style`, ...
- `olmo-core`: one JSON object per run whose `source_mixture_config` is an OLMo-core
  `SourceMixtureDatasetConfig` (`olmo_core.data.source_mixture`) and `scheduler` an
  `olmo_core.optim.scheduler` config, each as `Config.as_config_dict()` writes it (so `from_dict`
  builds it); plus the schedule values.
- `json`: the same values in midtrain's own terms (format `midtrain-export/1`).

Paths are where midtrain's stores keep the tokens (docs/external.md: what to substitute).
"""

from __future__ import annotations

import json
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midtrain.errors import MidtrainError
from midtrain.io import read_json
from midtrain.mix.spec import MixComponent
from midtrain.study.config import StudyConfig

if TYPE_CHECKING:
    from midtrain.data.store import TokenStore

FORMAT = "midtrain-export/1"
# midtrain shape -> (Megatron --lr-decay-style, --lr-wsd-decay-style or None)
MEGATRON_STYLES = {
    "constant": ("constant", None),
    "linear": ("linear", None),
    "cosine": ("cosine", None),
    "1-sqrt": ("WSD", "minus_sqrt"),  # with --lr-wsd-decay-iters = every step: 1 - sqrt(p)
    "exp": ("WSD", "exponential"),  # NOT the same curve: see `notes`
}


@dataclass(frozen=True)
class Share:
    """One source of a run's mix."""

    source: str
    share: float  # of the run's tokens (the ratios sum to 1)
    tokens: int  # share x the run's tokens, rounded
    max_repetition: float
    store: str  # the token store folder
    tokens_file: str  # the file holding its training ids (train.bin, or the original .npy/.bin)
    dtype: str  # uint16 | uint32
    megatron_prefix: str  # PREFIX of PREFIX.bin/PREFIX.idx


@dataclass(frozen=True)
class Schedule:
    tokens: int
    steps: int  # optimizer steps: tokens // batch_tokens
    shape: str
    start_lr: float
    final_lr: float
    start_lr_from: str  # "study" (schedule.start_lr) or "checkpoint" (its midtrain_state)
    warmup_steps: int
    seq_len: int
    batch_tokens: int
    batch_sequences: int  # batch_tokens // seq_len (Megatron's --global-batch-size)
    micro_batch: int
    seed: int


@dataclass(frozen=True)
class ExportRun:
    name: str  # ARM/sSEED
    arm: str
    seed: int
    mix: list[Share]
    schedule: Schedule


def load_runs(study: str | Path) -> tuple[StudyConfig, list[ExportRun]]:
    """The runs of a study TOML file (planned: the first seeds) or a study folder (study.json)."""
    from midtrain.study.plan import arm_list, arm_mix

    study = Path(study)
    if study.is_dir():
        cfg, planned = _from_record(study)
    elif study.is_file():
        from midtrain.study.config import load_study

        cfg = load_study(study)
        planned = [(arm, seed, arm_mix(cfg, cand, frac))
                   for arm, cand, frac in arm_list(cfg) for seed in cfg.first_seeds]  # fmt: skip
    else:
        raise MidtrainError(
            f"{study}: no such file or folder; pass a study TOML or its --out folder"
        )
    stores = _stores(cfg, {m.source for _, _, mix in planned for m in mix})
    sched = _schedule(cfg)
    runs = [ExportRun(f"{arm}/s{seed}", arm, seed, [_share(m, stores[m.source], sched.tokens)
                      for m in mix], Schedule(**{**asdict(sched), "seed": seed}))
            for arm, seed, mix in planned]  # fmt: skip
    return cfg, runs


def _from_record(folder: Path) -> tuple[StudyConfig, list[tuple[str, int, list[MixComponent]]]]:
    from midtrain.study.config import parse_study

    f = folder / "study.json"
    if not f.is_file():
        raise MidtrainError(
            f"{folder}: no study.json, not a study folder; pass the --out folder of "
            "`midtrain study run` or the study TOML file"
        )
    try:
        record = read_json(f)
        runs = [(r["arm"], int(r["seed"]), [MixComponent(**m) for m in r["mix"]])
                for r in record["runs"]]  # fmt: skip
        config = record["config"]
    except (KeyError, TypeError, ValueError) as e:  # pydantic's ValidationError is a ValueError
        reason = " ".join(str(e).split())[:120]
        raise MidtrainError(
            f"{f}: not a study.json of this midtrain version ({reason}); export the study TOML"
        ) from None
    return parse_study(config, source=str(f)), runs


def _stores(cfg: StudyConfig, used: set[str]) -> dict[str, TokenStore]:
    from midtrain.data.store import open_store

    return {s: open_store(cfg.stores[s], f"stores.{s}") for s in sorted(used)}


def _share(m: MixComponent, store: TokenStore, tokens: int) -> Share:
    train = store.train_file
    meg = store.manifest.get("megatron", {}).get("prefix")
    if meg is not None and store.manifest["train"]["file"] != "train.bin":
        prefix = meg  # imported from Megatron and read in place: the original dataset
    else:
        prefix = str(train.with_suffix(""))
    return Share(m.source, m.ratio, round(m.ratio * tokens), m.max_repetition, str(store.path),
                 str(train), store.manifest["dtype"], prefix)  # fmt: skip


def _schedule(cfg: StudyConfig) -> Schedule:
    """The values every run shares (the study's, with its [train] overrides)."""
    from midtrain.train.checkpoint import read_trainer_state
    from midtrain.train.schedules import make_schedule, resolve_final_lr

    over = cfg.train
    seq_len = int(over.get("seq_len", cfg.seq_len))
    batch_tokens = int(over.get("batch_tokens", cfg.batch_tokens))
    s = cfg.schedule
    start, origin = s.start_lr, "study"
    if start is None:
        state = read_trainer_state(cfg.checkpoint)
        if state is None:
            raise MidtrainError(
                f"schedule.start_lr: {cfg.checkpoint} has no midtrain_state/trainer.json, so the "
                "LR to start from is unknown; set schedule.start_lr (e.g. the LR the checkpoint "
                "was trained at)"
            )
        start, origin = state.lr, "checkpoint"
    if (steps := cfg.tokens // batch_tokens) < 1:
        raise MidtrainError(
            f"tokens: {cfg.tokens} is less than one optimizer step (batch_tokens {batch_tokens}); "
            "raise tokens or lower batch_tokens"
        )
    final = resolve_final_lr(s.name, start, s.final_lr, s.final_lr_fraction)
    make_schedule(s.name, start, final, steps, s.warmup_steps)  # the checks `study run` makes
    return Schedule(
        tokens=cfg.tokens, steps=steps, shape=s.name, start_lr=float(start), final_lr=final,
        start_lr_from=origin, warmup_steps=s.warmup_steps, seq_len=seq_len,
        batch_tokens=batch_tokens, batch_sequences=batch_tokens // seq_len,
        micro_batch=int(over.get("micro_batch", cfg.micro_batch)), seed=0,
    )  # fmt: skip


# -- formats ---------------------------------------------------------------------------------------


def megatron_args(run: ExportRun) -> list[str]:
    """Megatron-LM arguments of one run: the blend, then the schedule and batch geometry."""
    s = run.schedule
    args = ["--data-path"]
    for m in run.mix:
        args += [_num(m.share), m.megatron_prefix]
    style, wsd = MEGATRON_STYLES[s.shape]
    args += [
        "--seed", str(s.seed), "--seq-length", str(s.seq_len),
        "--global-batch-size", str(s.batch_sequences), "--micro-batch-size", str(s.micro_batch),
        "--train-iters", str(s.steps), "--lr", _num(s.start_lr), "--min-lr", _num(s.final_lr),
        "--lr-decay-style", style, "--lr-decay-iters", str(s.steps),
        "--lr-warmup-iters", str(s.warmup_steps),
    ]  # fmt: skip
    if wsd is not None:
        args += ["--lr-wsd-decay-style", wsd, "--lr-wsd-decay-iters", str(s.steps)]
    return args


def notes(run: ExportRun, fmt: str) -> list[str]:
    """Where the exported run differs from midtrain's own (said next to the export)."""
    s, out = run.schedule, []
    if fmt == "megatron" and s.shape == "exp":
        out.append(
            "midtrain's exp decays geometrically (start * (final/start)^p); Megatron's WSD "
            "exponential is final + (start - final) * (2 * 0.5^p - 1): the curves differ"
        )
    if fmt == "megatron" and s.warmup_steps:
        out.append(
            "warmup: midtrain's step s < W trains at start * (s + 1) / W, Megatron's at "
            "start * s / W (one step later); the decay after it is the same"
        )
    if fmt == "megatron" and any(m.max_repetition > 1 for m in run.mix):
        out.append("Megatron has no per-source repetition cap; max_repetition is not exported")
    return out


OLMO_SCHEDULERS = {"linear": "LinearWithWarmup", "cosine": "CosWithWarmup"}


def olmo_core_scheduler(s: Schedule) -> dict[str, Any] | None:  # OLMo-core's config dict
    """The schedule as an OLMo-core 3.x `Scheduler` config (`as_config_dict()` form), or None.

    OLMo-core's trainer counts steps from 1 (`global_step` is raised before each batch, then
    `set_lr` runs), midtrain's from 0: warmup W + 1 and t_max = steps + 1 put OLMo-core's decay
    on midtrain's LR at every step (and `alpha_f` its final LR). `olmo_core_notes` says the rest.
    """
    base = {"lr_field": "lr", "initial_lr_field": "initial_lr", "units": "steps"}
    mod = "olmo_core.optim.scheduler"
    if s.shape == "constant" and s.warmup_steps == 0:
        return {**base, "_CLASS_": f"{mod}.ConstantScheduler", "type": "constant"}
    if s.shape == "constant":  # its warmup is start * k / W at step k: midtrain's exactly
        return {**base, "warmup": s.warmup_steps, "warmup_min_lr": 0.0,
                "_CLASS_": f"{mod}.ConstantWithWarmup", "type": "constant_with_warmup"}  # fmt: skip
    if s.shape not in OLMO_SCHEDULERS:
        return None
    name = OLMO_SCHEDULERS[s.shape]
    kind = {"LinearWithWarmup": "linear_with_warmup", "CosWithWarmup": "cos_with_warmup"}[name]
    return {**base, "alpha_f": s.final_lr / s.start_lr, "t_max": s.steps + 1,
            "warmup": s.warmup_steps + 1, "warmup_min_lr": 0.0, "_CLASS_": f"{mod}.{name}",
            "type": kind}  # fmt: skip


def olmo_core_notes(run: ExportRun) -> list[str]:
    s = run.schedule
    if s.shape in ("1-sqrt", "exp"):
        return [f"OLMo-core 3.0 has no scheduler with midtrain's {s.shape} decay: scheduler is "
                "null; configure one from midtrain_schedule"]  # fmt: skip
    if s.shape in OLMO_SCHEDULERS and s.warmup_steps:
        return [f"warmup: OLMo-core reaches the start LR over {s.warmup_steps + 1} steps "
                f"(start * k / {s.warmup_steps + 1} at its step k), midtrain over "
                f"{s.warmup_steps}; the decay after it is the same"]  # fmt: skip
    return []


def olmo_core_config(run: ExportRun) -> dict[str, Any]:  # OLMo-core's config values (JSON)
    """The run as OLMo-core 3.x config values: `source_mixture_config` is a
    `SourceMixtureDatasetConfig` dict and `scheduler` a `Scheduler` dict (`from_dict` builds
    each); `max_steps` is the trainer's duration in steps; `midtrain_schedule` is ours."""
    s = run.schedule
    sources = [
        {"_CLASS_": "olmo_core.data.source_mixture.SourceMixtureConfig",
         "source_name": m.source, "target_ratio": m.share, "paths": [m.tokens_file],
         "max_repetition_ratio": m.max_repetition, "max_source_fraction": 1.0}
        for m in run.mix
    ]  # fmt: skip
    mixture = {
        "_CLASS_": "olmo_core.data.source_mixture.SourceMixtureDatasetConfig",
        "source_list": {"_CLASS_": "olmo_core.data.source_mixture.SourceMixtureList",
                        "sources": sources},
        "requested_tokens": s.tokens, "global_batch_size": s.batch_tokens, "processes": 1,
        "seed": s.seed, "render_tables": True, "quiet": False,
    }  # fmt: skip
    dtypes = {m.dtype for m in run.mix}
    return {
        "run": run.name,
        "source_mixture_config": mixture,
        "sequence_length": s.seq_len,
        "dtype": dtypes.pop() if len(dtypes) == 1 else sorted(dtypes),
        "scheduler": olmo_core_scheduler(s),
        "max_steps": s.steps,
        "midtrain_schedule": asdict(s),
        "notes": olmo_core_notes(run),
    }


def render(runs: list[ExportRun], fmt: str, study: str) -> str:
    if fmt == "megatron":
        lines = [f"# midtrain study export {study} --format megatron ({len(runs)} runs)"]
        for r in runs:
            lines.append(f"# {r.name}")
            lines += [f"# note: {n}" for n in notes(r, fmt)]
            lines.append(shlex.join(megatron_args(r)))
        return "\n".join(lines) + "\n"
    if fmt == "olmo-core":
        return json.dumps([olmo_core_config(r) for r in runs], indent=2) + "\n"
    if fmt == "json":
        rows = [{**asdict(r), "notes": {"megatron": notes(r, "megatron"),
                                        "olmo-core": olmo_core_notes(r)}} for r in runs]  # fmt: skip
        body = {"format": FORMAT, "study": study, "runs": rows}
        return json.dumps(body, indent=2) + "\n"
    raise MidtrainError(f"--format {fmt!r}: use megatron, olmo-core or json")


def _num(x: float) -> str:
    """A float as Megatron reads it back exactly (repr round-trips through float())."""
    return repr(float(x))
