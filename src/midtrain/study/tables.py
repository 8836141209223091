"""A study file as data: the tables that presets, rounds and `optimize` build or read before
`parse_study` turns them into a `StudyConfig` (or after study.json recorded one).

Typed dictionaries, so the data stays what tomli_w writes and study.json holds; every key is
optional, as in the file (a missing key takes the `StudyConfig` default). Each section's keys
are its pydantic model's fields (tests/test_study_config.py checks they stay so); `[train]` is
any run-config fields, checked where the run config is built.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


class ScheduleTable(TypedDict, total=False):
    """`[schedule]` (`train.config.ScheduleConfig`)."""

    name: str
    start_lr: float | None
    final_lr: float | None
    final_lr_fraction: float | None
    warmup_steps: int


class TaskSettingTable(TypedDict, total=False):
    """`[eval.task_settings.TASK]` (`eval.api.TaskSetting`)."""

    limit: int | None
    num_fewshot: int | None
    batch_size: int | None


class EvalTable(TypedDict, total=False):
    """`[eval]` (`study.sections.EvalSpec`)."""

    tasks: list[str]
    include_path: str | None
    limit: int | None
    num_fewshot: int
    batch_size: int
    task_settings: dict[str, TaskSettingTable]
    allow_code_execution: bool
    domains: list[str] | None
    select: Literal["all", "snr"]
    select_from: str | None
    points: list[float]


class AnalysisTable(TypedDict, total=False):
    """`[analysis]` (`study.sections.AnalysisSpec`)."""

    primary: Literal["gold_logprob_per_byte", "acc", "acc_norm", "margin", "score"]
    confidence: float
    correction: Literal["none", "holm", "bh"]
    primary_score: Literal["mean", "standardized"]
    allow_task_regression: bool
    mde: float | None
    max_seeds: int
    min_snr: float
    min_checkpoint_progress: float
    decide_on: Literal["base", "sft"]


class SftSetTable(TypedDict, total=False):
    """`[[sft_probe.sets]]` (`probe.config.SftSet`)."""

    name: str
    train: str
    val: str | None


class TemplateTable(TypedDict, total=False):
    """`[sft_probe.template]` (`sft.config.SftTemplate`)."""

    prompt: str
    response: str
    message: str
    assistant: str
    roles: dict[str, str]


class OptimizerTable(TypedDict, total=False):
    """`[sft_probe.optimizer]` (`train.config.OptimizerConfig`)."""

    weight_decay: float
    betas: list[float]
    eps: float
    grad_clip: float
    load_state: bool


class SftProbeTable(TypedDict, total=False):
    """`[sft_probe]` (`probe.config.SftProbeSpec`)."""

    val_fraction: float
    template: TemplateTable
    train_on_prompt: bool
    overlong: Literal["truncate_prompt", "drop"]
    lrs: list[float]
    epochs: int
    batch_size: int
    micro_batch: int
    seq_len: int | None
    warmup_fraction: float
    schedule: str
    final_lr_fraction: float
    optimizer: OptimizerTable
    precision: Literal["auto", "fp32", "bf16"]
    checkpoint_every: int
    sets: list[SftSetTable]
    seeds: list[int] | None
    tasks: bool
    start: bool


class ResourcesTable(TypedDict, total=False):
    """`[resources]` (`study.resources.Resources`)."""

    cpus: float
    gpus: float
    processes: int
    memory: int | str | None
    custom: dict[str, float]
    max_retries: int
    partition: str | None
    time: int | str | None
    sbatch: dict[str, str | int | bool]
    slurm_folder: str | None


class KeepTable(TypedDict, total=False):
    """`[keep]` (`study.keep.KeepSpec`)."""

    run: Literal["weights", "full", "none"]
    sft: Literal["none", "chosen", "all"]
    merge: bool


class GuardTable(TypedDict, total=False):
    """`[[guards]]`: a task (at least -tolerance) or a domain (at most +tolerance)."""

    task: str
    domain: str
    tolerance: float


class CandidateTable(TypedDict, total=False):
    """`[[candidates]]`."""

    name: str
    mix: dict[str, float]
    fractions: list[float]
    max_repetition: float
    continued_pretraining: bool
    allow_special_tokens: bool
    targets: list[str]


class StudyTable(TypedDict, total=False):
    """The study file (or study.json's `config`), top level."""

    name: str
    checkpoint: str
    stores: dict[str, str]
    base: dict[str, float]
    base_max_repetition: float
    candidates: list[CandidateTable]
    fractions: list[float]
    seeds: list[int] | Literal["auto"]
    tokens: int
    seq_len: int
    batch_tokens: int
    micro_batch: int
    schedule: ScheduleTable
    paired_streams: bool
    eval: EvalTable
    analysis: AnalysisTable
    guards: list[GuardTable]
    full_run_tokens: int | None
    checkpoint_tokens: int | None
    sft_probe: SftProbeTable | None
    train: dict[str, Any]  # run-config fields (any), and `command`
    source_max_repetition: dict[str, float]
    merge_seeds: bool | list[str]
    starts: list[str]
    starts_mode: Literal["cooldown", "to_end"]
    reuse: list[str]
    resources: ResourcesTable
    keep: KeepTable


class RoundTable(StudyTable, total=False):
    """A round file: a study's fields plus the round's own (`integrate/config.py:RoundSpec`)."""

    round: int
    anchor: dict[str, float]
    anchor_share: float
    no_anchor: bool
    targets: list[str]
    sources: dict[str, float]
    previous: dict[str, float]
    previous_name: str
    ablate: list[str]
    budgets: dict[str, float]
    max_repetition: dict[str, float]
