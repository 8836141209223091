"""A study file as data: the tables that presets, rounds and `optimize` build or read before
`parse_study` turns them into a `StudyConfig` (or after study.json recorded one).

Typed dictionaries, so the data stays what tomli_w writes and study.json holds; every key is
optional, as in the file (a missing key takes the `StudyConfig` default). Sections the code
only copies through (`schedule`, `eval`, `analysis`, `sft_probe`, `train`, `resources`, `keep`)
stay plain JSON objects.
"""

from __future__ import annotations

from typing import Any, Literal, TypedDict


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
    schedule: dict[str, Any]
    paired_streams: bool
    eval: dict[str, Any]
    analysis: dict[str, Any]
    guards: list[GuardTable]
    full_run_tokens: int | None
    checkpoint_tokens: int | None
    sft_probe: dict[str, Any] | None
    train: dict[str, Any]
    source_max_repetition: dict[str, float]
    merge_seeds: bool | list[str]
    starts: list[str]
    starts_mode: Literal["cooldown", "to_end"]
    reuse: list[str]
    resources: dict[str, Any]
    keep: dict[str, Any]


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
