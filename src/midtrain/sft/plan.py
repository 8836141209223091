"""Plan an SFT probe: every check that can fail on input, before anything is written.

`plan_sft(cfg)` loads the tokenizer and model config of the checkpoint, reads, renders and
tokenises the training and validation rows, scans them for chat special tokens and fixes the step
geometry; a one-line `MidtrainError` on the first problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypedDict

import numpy as np

from midtrain import env
from midtrain.errors import MidtrainError
from midtrain.sft import data
from midtrain.sft.config import SftConfig, SftConfigRecord
from midtrain.sft.formatcheck import FormatReport, scan
from midtrain.sft.results import DataSummary
from midtrain.train import checkpoint as ckpt
from midtrain.train import speed
from midtrain.train.distributed import SINGLE, Dist, resolve
from midtrain.train.schedules import SCHEDULES, BoundSchedule, make_schedule


class ResolvedRecord(TypedDict):
    """What `plan_sft` derived from the config (config.json's "resolved")."""

    device: str
    precision: str
    seq_len: int
    steps: int
    steps_per_epoch: int
    micro_batch: int
    model_type: str
    parallel: str  # the distributed mode
    world_size: int
    data: dict[str, int | float]  # DataSummary as JSON
    format_check: dict[str, int]  # special token -> count (formatcheck.FormatReport)
    warnings: list[str]


class ResolvedConfig(SftConfigRecord):
    """config.json of an SFT probe: the config and what was resolved from it."""

    resolved: ResolvedRecord


@dataclass
class SftPlan:
    cfg: SftConfig
    device: str
    precision: str
    tokenizer: Any
    model_config: Any
    seq_len: int
    train: data.Examples
    val: data.Examples
    steps_per_epoch: int
    micro_batch: int
    fmt: FormatReport
    warnings: list[str] = field(default_factory=list)
    dist: Dist = SINGLE  # this process under torchrun (docs/scaling.md)

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def tokens_per_step(self) -> int:
        """Mean real tokens per step (the log's tok/s); steps differ by their examples' lengths."""
        return round(self.summary().train_tokens * self.cfg.epochs / self.steps)

    def schedule(self, lr: float) -> BoundSchedule:
        c = self.cfg
        warmup = min(self.steps, math.ceil(c.warmup_fraction * self.steps))
        final = lr if c.schedule == "constant" else lr * c.final_lr_fraction
        return make_schedule(c.schedule, lr, final, self.steps, warmup)

    def summary(self) -> DataSummary:
        return self.data_summary

    @cached_property
    def data_summary(self) -> DataSummary:
        t, v, c = self.train.examples, self.val.examples, self.cfg
        lens = np.array([len(e.ids) for e in t])
        return DataSummary(
            train_rows=self.train.rows, val_rows=self.val.rows,
            train_examples=len(t), val_examples=len(v),
            truncated=self.train.truncated + self.val.truncated,
            dropped=self.train.dropped + self.val.dropped,
            train_tokens=int(lens.sum()),
            response_tokens=data.n_targets(t, c.train_on_prompt),
            pad_fraction=round(data.pad_fraction(t, c.batch_size, self.micro_batch, c.seed), 4),
        )  # fmt: skip

    def resolved(self) -> ResolvedConfig:
        return {
            **self.cfg.model_dump(mode="json"),
            "resolved": {
                "device": self.device, "precision": self.precision, "seq_len": self.seq_len,
                "steps": self.steps,
                "steps_per_epoch": self.steps_per_epoch, "micro_batch": self.micro_batch,
                "model_type": self.model_config.model_type,
                "parallel": self.dist.mode, "world_size": self.dist.world,
                "data": self.summary().model_dump(), "format_check": dict(self.fmt.counts),
                "warnings": self.warnings,
            },
        }  # fmt: skip


def plan_sft(cfg: SftConfig) -> SftPlan:
    """Resolve and validate an SFT config: raises a one-line MidtrainError, writes nothing."""
    from midtrain.data.tokenizer import load_tokenizer

    env.setup()
    device = env.resolve_device(cfg.device)
    precision = speed.resolve_precision(cfg.precision, device)
    ckpt.check_hf_folder(cfg.checkpoint, "checkpoint")
    tok = load_tokenizer(cfg.checkpoint)
    model_config = _model_config(cfg)
    seq_len = cfg.seq_len or min(_positions(model_config) or DEFAULT_SEQ_LEN, DEFAULT_SEQ_LEN)
    _check_settings(cfg)
    examples = data.load_examples(cfg.data, "--data", cfg, tok, seq_len)
    if cfg.val is None:
        train, val = data.split(examples, cfg.val_fraction, cfg.seed)
    else:
        train, val = examples, data.load_examples(cfg.val, "--val", cfg, tok, seq_len)
    fmt = scan(_sources(train, val), tok)
    micro = min(cfg.micro_batch, cfg.batch_size)
    spe = math.ceil(len(train.examples) / cfg.batch_size)
    plan = SftPlan(cfg, device, precision, tok, model_config, seq_len, train, val, spe, micro, fmt,
                   dist=resolve(cfg.parallel))  # fmt: skip
    for lr in cfg.lrs:
        plan.schedule(lr)  # the schedule's own checks (e.g. `exp` needs final_lr_fraction > 0)
    plan.warnings += [w for w in [fmt.summary("sft data")] if w] + _fit_warnings(plan)
    plan.warnings += [w for w in [speed.precision_warning(precision, device)] if w]
    return plan


def _sources(train: data.Examples, val: data.Examples):  # noqa: ANN202 - an iterator of pairs
    for ex in (train, val):
        yield from ex.sources


def _model_config(cfg: SftConfig) -> Any:
    from transformers import AutoConfig

    env.quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(cfg.checkpoint)
    except (OSError, ValueError, KeyError) as e:
        raise MidtrainError(f"checkpoint: cannot read {cfg.checkpoint}/config.json: {e}") from None
    limit = _positions(config)
    if limit is not None and cfg.seq_len is not None and cfg.seq_len > limit:
        raise MidtrainError(
            f"seq_len: {cfg.seq_len} is longer than the model's max_position_embeddings "
            f"{limit}; lower seq_len"
        )
    return config


DEFAULT_SEQ_LEN = 2048  # seq_len when not given: the model's positions, at most this


def _positions(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None


TEMPLATE_KEYS = {"prompt": ("prompt",), "response": ("response",),
                 "message": ("role", "content"), "assistant": ("role",)}  # fmt: skip


def _check_settings(cfg: SftConfig) -> None:
    if cfg.schedule not in SCHEDULES:
        raise MidtrainError(f"schedule: unknown schedule {cfg.schedule!r}; use one of "
                            f"{', '.join(SCHEDULES)}")  # fmt: skip
    if SCHEDULES[cfg.schedule].needs_positive_final and cfg.final_lr_fraction <= 0:
        raise MidtrainError(f"final_lr_fraction: {cfg.schedule!r} decays geometrically and needs "
                            "a final LR > 0; set final_lr_fraction = 0.01")  # fmt: skip
    if len(set(cfg.lrs)) != len(cfg.lrs) or any(not lr > 0 for lr in cfg.lrs):
        raise MidtrainError(f"lrs: {cfg.lrs} must be distinct positive LRs, e.g. [1e-5, 3e-5]")
    for name, keys in TEMPLATE_KEYS.items():
        text = getattr(cfg.template, name)
        try:
            text.format(**dict.fromkeys(keys, ""))
        except (KeyError, IndexError, ValueError) as e:
            fields = ", ".join(f"{{{k}}}" for k in keys)
            raise MidtrainError(f"template.{name}: {text!r} is not a valid template ({e}); use "
                                f"only {fields} and write braces as {{{{ }}}}") from None  # fmt: skip


def _fit_warnings(plan: SftPlan) -> list[str]:
    s = plan.summary()
    if not (s.truncated or s.dropped):
        return []
    return [f"seq_len {plan.cfg.seq_len}: {s.truncated} examples had their prompt cut from the "
            f"left, {s.dropped} were dropped (overlong = {plan.cfg.overlong!r})"]  # fmt: skip
