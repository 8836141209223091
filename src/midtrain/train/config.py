"""The run config: one typed tree for a cooldown (`anneal`) or a constant-LR pretrain.

A TOML file and a dict (the Python API, a study's jobs) are two ways of writing it. Paths in a TOML
file are relative to the file; in a dict, to the working directory. `docs/config.md` is generated
from these models (`midtrain config docs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator

from midtrain.errors import MidtrainError
from midtrain.mix.spec import MixComponent, check_ratios
from midtrain.schema import Strict, absolute_path, field, load_config
from midtrain.train.trackers import TrackersConfig


class ScheduleConfig(Strict):
    """The LR schedule of a run (docs/runs.md: Schedules). The study file's [schedule] too."""

    name: str = field(
        "linear", description="Shape: constant, linear, cosine, 1-sqrt (Hägele et al.), exp."
    )
    start_lr: float | None = field(
        None,
        gt=0,
        description="LR of the first step; omitted: the `lr` in the checkpoint's midtrain_state.",
        unit="LR",
    )
    final_lr: float | None = field(
        None,
        ge=0,
        description="LR the run ends at (absolute). Give this or final_lr_fraction.",
        unit="LR",
    )
    final_lr_fraction: float | None = field(
        None,
        ge=0,
        le=1,
        description="Final LR as a fraction of start_lr (default 0; `exp`: 0.01).",
        unit="fraction",
    )
    warmup_steps: int = field(
        0,
        ge=0,
        description="Linear (re-)warmup to start_lr over the first steps (WSD-S).",
        unit="steps",
    )


class OptimizerConfig(Strict):
    """AdamW; the LR comes from the schedule."""

    weight_decay: float = field(
        0.1, ge=0, description="AdamW decay on matrices (biases and norms: 0)."
    )
    betas: tuple[float, float] = field((0.9, 0.95), description="AdamW betas.")
    eps: float = field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float = field(
        1.0, ge=0, description="Global grad-norm clip (0 = none; the norm is logged either way)."
    )
    load_state: bool = field(
        True,
        description="Load AdamW moments from the init checkpoint's midtrain_state when present.",
    )


class RunConfig(Strict):
    """One training run: a warm start from `init` (anneal) or a fresh `[model]` (pretrain)."""

    init: str | None = field(
        None, description="HF causal-LM folder to warm-start from. Exactly one of init and [model]."
    )
    tokenizer: str | None = field(
        None, description="HF tokenizer folder (default: the init folder's); required with [model]."
    )
    model: dict[str, Any] | None = field(  # transformers' config kwargs (AutoConfig.for_model)
        None,
        description="A fresh model: model_type (default llama) plus HF config kwargs; "
        "vocab_size and special ids default to the tokenizer's.",
    )
    stores: dict[str, str] = field(description="Token store folders by source name.")
    mix: list[MixComponent] = field(description="The run's sources, ratios and repetition caps.")
    pair_base: dict[str, float] | None = field(
        None,
        description="{source = ratio}: the matched control's mix. The run's base sequences take "
        "the control's windows at the control's steps (same seed); its other sources fill the "
        "steps they free (common random numbers; docs/studies.md).",
    )
    tokens: int = field(
        gt=0,
        description="Token budget; the run trains tokens // batch_tokens steps.",
        unit="tokens",
    )
    seq_len: int = field(256, gt=1, description="Tokens per training sequence.", unit="tokens")
    batch_tokens: int = field(
        4096, gt=0, description="Tokens per optimizer step; a multiple of seq_len.", unit="tokens"
    )
    micro_batch: int = field(
        16,
        gt=0,
        description="Sequences per forward/backward (gradient accumulation).",
        unit="sequences",
    )
    seed: int = field(0, description="Data order, fresh-model init and dropout.")
    device: Literal["auto", "cpu", "cuda"] = field(
        "auto", description="auto = cuda when available."
    )
    precision: Literal["auto", "fp32", "bf16"] = field(
        "auto", description="auto = fp32 on CPU, bf16 autocast on CUDA; master weights stay fp32."
    )
    checkpoint_every: int = field(
        50,
        ge=0,
        description="Steps between resumable saves to OUT/state (0 = final only).",
        unit="steps",
    )
    parallel: Literal["auto", "none", "ddp", "fsdp"] = field(
        "auto",
        description="Under torchrun (WORLD_SIZE > 1): ddp or fsdp (FSDP2); auto = ddp. One process "
        "runs single-process whatever this says; not part of the run's identity (docs/scaling.md).",
    )
    compile: bool | Literal["auto"] = field(
        "auto",
        description="torch.compile the model and loss; auto = on CUDA, off on CPU "
        "(where compiling costs more than it saves on short runs).",
    )
    threads: int = field(
        0, ge=0, description="torch threads (0 = torch's default); not part of the run's identity."
    )
    schedule: ScheduleConfig = field(ScheduleConfig(), description="The LR schedule.")
    optimizer: OptimizerConfig = field(OptimizerConfig(), description="AdamW settings.")
    save_points: list[float] | None = field(
        None,
        description="Fractions of the run's steps (in (0, 1), increasing) after which its weights "
        "alone are saved to OUT/points/step-N (a study's eval.points; the end is final/).",
        unit="fraction",
    )
    trackers: TrackersConfig = field(
        TrackersConfig(),
        description='Also log to trackers: ["wandb", "tensorboard"] or a table (docs/runs.md); '
        "rank 0 only; not part of the run's identity.",
    )

    @field_validator("pair_base")
    @classmethod
    def _pair_base_sums_to_one(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        if v is not None:
            check_ratios(v)
        return v

    def identity(self) -> dict[str, Any]:  # the config's JSON dump, less some fields
        """The fields that change what a run computes (threads, trackers and parallel only change
        its speed or where metrics go; a distributed state/ records its world size and mode,
        checked on resume)."""
        return identity(self.model_dump(mode="json"))


def identity(config: Mapping[str, Any]) -> dict[str, Any]:  # a dumped run config (JSON)
    """A dumped run config without the fields that do not change what it computes.

    `compile = "auto"` counts as `false` (the default before "auto"), so run directories and
    caches of earlier releases keep their identity; like `device = "auto"`, it is the setting as
    written, not as resolved."""
    out = {k: v for k, v in config.items()
           if k not in ("threads", "trackers", "parallel", "resolved")}  # fmt: skip
    if out.get("compile") == "auto":
        out["compile"] = False
    if out.get("pair_base", "") is None:  # unpaired: as before pairing existed
        del out["pair_base"]
    if not out.get("save_points", 1):  # no points: as before points existed
        del out["save_points"]
    return out


def point_steps(points: list[float] | None, steps: int) -> list[int]:
    """The optimizer step after which each point's weights are saved: round(p x steps); a point
    before the first step, at the end, or on another point's step is a one-line error."""
    out: list[int] = []
    for p in points or []:
        k = round(p * steps)
        if not 0.0 < p < 1.0 or k < 1 or k >= steps or (out and k <= out[-1]):
            raise MidtrainError(
                f"save_points: {p:g} of {steps} steps falls on step {k}, which is not a distinct "
                f"step strictly inside the run; space the points at least 1/{steps} apart, "
                "inside (0, 1), or train more steps"
            )
        out.append(k)
    return out


def load_run_config(src: str | Path | Mapping[str, Any] | RunConfig) -> RunConfig:
    """A RunConfig from a TOML file (paths relative to it) or a dict (paths relative to cwd)."""
    cfg, base = load_config(RunConfig, src, "run config")
    if base is None:
        return cfg
    return cfg.model_copy(
        update={
            "init": absolute_path(base, cfg.init),
            "tokenizer": absolute_path(base, cfg.tokenizer),
            "stores": {k: absolute_path(base, v) for k, v in cfg.stores.items()},
        }
    )


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """`midtrain pretrain`: a fresh [model] on the `constant` schedule (the WSD stable phase)."""
    if cfg.model is None or cfg.init is not None:
        raise MidtrainError(
            "pretrain trains a fresh [model]: set [model] and remove init (use `anneal` to start "
            "from a checkpoint)"
        )
    if "name" in cfg.schedule.model_fields_set and cfg.schedule.name != "constant":
        raise MidtrainError(
            f"schedule.name: pretrain uses 'constant', not {cfg.schedule.name!r}; "
            "use `midtrain anneal` for a cooldown"
        )
    schedule = cfg.schedule.model_copy(update={"name": "constant"})
    return cfg.model_copy(update={"schedule": schedule})
