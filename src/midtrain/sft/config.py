"""The SFT config: one typed tree for a full fine-tune of a checkpoint on prompt/response rows.

A TOML file, the CLI's options and a dict (the Python API, a study's `sft` jobs) are three ways of
writing it. Paths in a TOML file are relative to the file; in a dict, to the working directory.
docs/sft.md explains the template, masking, padding, the LR grid and the outputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypedDict

from midtrain.schema import Strict, absolute_path, field, load_config
from midtrain.train.config import OptimizerConfig


class SftTemplate(Strict):
    """Plain-text rendering of a row (no special tokens); the tokenizer's EOS ends each response."""

    prompt: str = field(
        "Question: {prompt}\nAnswer:",
        description="Text before the response ({prompt} = the row's prompt); never trained on "
        "unless train_on_prompt.",
    )
    response: str = field(
        " {response}",
        description="The trained text ({response} = the row's response, or an assistant "
        "message); the tokenizer's EOS token follows it.",
    )
    message: str = field(
        "{role}: {content}\n",
        description="A non-assistant message of a `messages` row ({role} = its name in roles).",
    )
    assistant: str = field(
        "{role}:",
        description="What precedes an assistant message (masked); `response` renders the message "
        "itself, then EOS, then a newline when more messages follow.",
    )
    roles: dict[str, str] = field(
        {"system": "System", "user": "User", "assistant": "Assistant"},
        description="Display name of each message role; a role not listed is an error.",
    )


class SftSettings(Strict):
    """How to fine-tune: the template, the LR grid, the batches (a study's [sft_probe] shares them)."""

    val_fraction: float = field(
        0.1,
        gt=0,
        lt=1,
        description="Share of `data` held out for validation when `val` is omitted.",
        unit="fraction",
    )
    template: SftTemplate = field(SftTemplate(), description="The plain-text template.")
    train_on_prompt: bool = field(
        False, description="Also train on prompt tokens (default: response tokens only)."
    )
    overlong: Literal["truncate_prompt", "drop"] = field(
        "truncate_prompt",
        description="An example longer than seq_len: cut the prompt from the left (dropped when "
        "the response alone does not fit), or drop it; either is counted and reported.",
    )
    lrs: list[float] = field(
        [1e-5, 3e-5, 1e-4],
        min_length=1,
        description="Peak-LR grid: one fine-tune per LR; the lowest validation loss wins.",
        unit="LR",
    )
    epochs: int = field(2, ge=1, description="Passes over the training rows.", unit="epochs")
    batch_size: int = field(16, gt=0, description="Examples per optimizer step.", unit="examples")
    micro_batch: int = field(
        8, gt=0, description="Examples per forward/backward (gradient accumulation).",
        unit="examples",
    )  # fmt: skip
    seq_len: int | None = field(
        None, gt=1,
        description="Longest example; each micro batch is padded to its longest. Default: the "
        "model's max_position_embeddings, at most 2048.",
        unit="tokens",
    )  # fmt: skip
    warmup_fraction: float = field(
        0.03, ge=0, le=1, description="Linear warmup over this share of the steps.",
        unit="fraction",
    )  # fmt: skip
    schedule: str = field("linear", description="Decay after warmup: linear, cosine, constant...")
    final_lr_fraction: float = field(
        0.0, ge=0, le=1, description="Final LR as a fraction of the peak LR.", unit="fraction"
    )
    optimizer: OptimizerConfig = field(
        OptimizerConfig(weight_decay=0.0, load_state=False),
        description="AdamW; SFT defaults: weight_decay = 0, load_state = false (fresh moments).",
    )
    precision: Literal["auto", "fp32", "bf16"] = field(
        "auto", description="auto = fp32 on CPU, bf16 autocast on CUDA; master weights stay fp32."
    )
    checkpoint_every: int = field(
        50, ge=0, description="Steps between resumable saves (0 = final only).", unit="steps"
    )


class SftConfig(SftSettings):
    """One SFT probe: a full fine-tune of `checkpoint` per LR of `lrs`, the best by val loss."""

    checkpoint: str = field(description="HF causal-LM folder (weights + tokenizer) to fine-tune.")
    data: str = field(
        description='Training rows, JSONL: {"prompt", "response"} or {"messages": [...]}.'
    )
    val: str | None = field(
        None, description="Validation rows (same format); omitted: val_fraction of `data`."
    )
    seed: int = field(0, description="Data order, validation split and dropout.")
    device: Literal["auto", "cpu", "cuda"] = field(
        "auto", description="auto = cuda when available."
    )
    threads: int = field(
        0, ge=0, description="torch threads (0 = torch's default); not part of the identity."
    )
    parallel: Literal["auto", "none", "ddp", "fsdp"] = field(
        "auto",
        description="Under torchrun (WORLD_SIZE > 1): ddp or fsdp (FSDP2); auto = ddp. Not part "
        "of the identity (docs/scaling.md).",
    )

    def identity(self) -> SftIdentity:
        """The fields that change what is computed (threads and parallel only change the speed;
        a distributed state/ records its world size and mode, checked on resume)."""
        return {k: v for k, v in self.model_dump(mode="json").items()
                if k not in ("threads", "parallel")}  # fmt: skip


class TemplateRecord(TypedDict):
    """`SftTemplate` as JSON."""

    prompt: str
    response: str
    message: str
    assistant: str
    roles: dict[str, str]


class SftIdentity(TypedDict):
    """`SftConfig.identity()`: the config as JSON, less threads and parallel (tests check that
    these keys are the config's fields)."""

    val_fraction: float
    template: TemplateRecord
    train_on_prompt: bool
    overlong: str
    lrs: list[float]
    epochs: int
    batch_size: int
    micro_batch: int
    seq_len: int | None
    warmup_fraction: float
    schedule: str
    final_lr_fraction: float
    optimizer: dict[str, float | bool | list[float]]  # OptimizerConfig as JSON
    precision: str
    checkpoint_every: int
    checkpoint: str
    data: str
    val: str | None
    seed: int
    device: str


class SftConfigRecord(SftIdentity):
    """`SftConfig` as JSON (config.json adds what the plan resolved: `SftPlan.resolved`)."""

    threads: int
    parallel: str


def load_sft_config(src: str | Path | Mapping[str, Any] | SftConfig) -> SftConfig:
    """An SftConfig from a TOML file (paths relative to it) or a dict (relative to cwd)."""
    cfg, base = load_config(SftConfig, src, "sft config")
    if base is None:
        return cfg
    paths = ("checkpoint", "data", "val")
    return cfg.model_copy(update={k: absolute_path(base, getattr(cfg, k)) for k in paths})
