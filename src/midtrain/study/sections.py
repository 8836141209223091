"""The sections of a study file: `[[candidates]]`, `[[guards]]`, `[eval]` and `[analysis]`.

`StudyConfig` (study/config.py) is made of these; each validates its own fields.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from midtrain.eval.api import EvalSettings
from midtrain.mix.spec import check_ratios
from midtrain.schema import Strict, field

CONTROL = "control"
RUN_OWNED = ("init", "model", "stores", "mix", "tokens", "seed", "schedule")


class Candidate(Strict):
    """A candidate: one source or a small mix of sources, mixed into the base at `fractions`."""

    name: str = field(description="The arm's name in tables and folders (not 'control').")
    mix: dict[str, float] = field(
        description="{source = ratio}: the candidate's own sources; ratios sum to 1."
    )
    fractions: list[float] | None = field(
        None, description="Shares of the anneal mix given to the candidate (default: the study's).",
        unit="fraction",
    )  # fmt: skip
    max_repetition: float = field(
        1.0, ge=1.0, description="Most epochs of each candidate source's tokens per run.",
        unit="epochs",
    )  # fmt: skip
    continued_pretraining: bool = field(
        False,
        description="Also run a continued-pretraining arm NAME@cpt: 100% candidate data (no base "
        "mix), same tokens and schedule.",
    )
    allow_special_tokens: bool = field(
        False,
        description="Train on this candidate's stores even when they hold the tokenizer's special "
        "tokens (e.g. chat markers); by default `study run` refuses such a store: midtraining "
        "data is plain text.",
    )
    targets: list[str] = field(
        [],
        description="Tasks of eval.tasks the candidate is meant to improve. Integration rounds "
        "and `optimize` guard every other task automatically (docs/integration.md).",
    )

    @field_validator("mix")
    @classmethod
    def _mix_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        check_ratios(v)
        return v


class Guard(Strict):
    """A guarded task or domain: the arm may not regress beyond `tolerance` on it."""

    task: str | None = field(None, description="A task of eval.tasks (primary metric).")
    domain: str | None = field(None, description="A store name (held-out bits per byte).")
    tolerance: float = field(
        0.0, ge=0.0, description="Allowed regression (primary-metric units or bits per byte)."
    )

    @model_validator(mode="after")
    def _one_target(self) -> Guard:
        if (self.task is None) == (self.domain is None):
            raise ValueError("give exactly one of task = '...' or domain = '...'")
        return self


class EvalSpec(EvalSettings):
    """The study's [eval]: lm-eval tasks and which stores' held-out splits to score."""

    domains: list[str] | None = field(
        None, description="Stores whose held-out bits per byte are measured (default: all)."
    )
    select: Literal["all", "snr"] = field(
        "all",
        description="Tasks in the primary score: all, or snr (drop saturated and low-SNR tasks; "
        "the screening table is always reported).",
    )
    select_from: str | None = field(
        None,
        description='With select = "snr": a finished study folder whose task screening (its '
        "start checkpoint and control) picks this study's primary tasks, instead of this "
        "study's own start and control.",
    )
    points: list[float] = field(
        [1.0],
        description="Points along each run's anneal, as fractions of its tokens, where its "
        "weights are saved (weights only), evaluated like the final checkpoint and deleted: the "
        "trajectories (docs/studies.md#trajectories). The end (1.0) is always evaluated; [1.0]: "
        "the end only.",
        unit="fraction",
    )

    @field_validator("points")
    @classmethod
    def _points_in_order(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < p <= 1.0 for p in v):
            bad = next(p for p in v if not 0.0 < p <= 1.0)
            raise ValueError(f"{bad:g} is outside (0, 1]; give fractions of the run's tokens, "
                             "e.g. [0.5, 1.0]")  # fmt: skip
        if any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("must be sorted and distinct (each point once, in increasing "
                             f"order); write {sorted(set(v))}")  # fmt: skip
        return v

    @property
    def point_fractions(self) -> list[float]:
        """Every evaluated point, the end (1.0) included."""
        return [p for p in self.points if p < 1.0] + [1.0]

    @model_validator(mode="after")
    def _select_from_needs_snr(self) -> EvalSpec:
        if self.select_from is not None and self.select != "snr":
            raise ValueError('select_from screens tasks by SNR: set select = "snr" as well')
        return self


class AnalysisSpec(Strict):
    """How arms are compared with the control and decided."""

    primary: Literal["gold_logprob_per_byte", "acc", "acc_norm", "margin", "score"] = field(
        "gold_logprob_per_byte",
        description="Per-example task metric averaged over tasks into the primary score; score: "
        "each task's own headline metric on a 0-1 scale (accuracy for multiple choice, exact "
        "match for generative tasks, pass@1 for code). Tasks without the metric leave the "
        "primary, each named with the reason.",
    )
    confidence: float = field(
        0.95, gt=0.5, lt=1.0, description="Confidence of intervals and verdicts.", unit="fraction"
    )
    correction: Literal["none", "holm", "bh"] = field(
        "holm",
        description="Multiple-testing correction over the study's decisions (every arm's primary "
        "and every guard): holm (family-wise error), bh (false discovery rate) or none.",
    )
    primary_score: Literal["mean", "standardized"] = field(
        "mean",
        description="How tasks combine into the primary: their mean, or standardized (each task "
        "divided by its run-to-run sd, so one large-swing task cannot hide another).",
    )
    allow_task_regression: bool = field(
        False,
        description="Include an arm even when a primary task is significantly worse (by default "
        "that blocks include and flags task-regression).",
    )
    mde: float | None = field(
        None, gt=0,
        description="The smallest effect on the primary worth detecting: seeds_needed and the "
        "dry run's plan are computed for it.",
    )  # fmt: skip
    max_seeds: int = field(
        5, ge=2, le=64, description='With seeds = "auto": the most seeds an arm may get.'
    )
    min_snr: float = field(
        1.0,
        ge=0,
        description='With eval.select = "snr": tasks below this signal/noise leave the primary.',
    )
    min_checkpoint_progress: float = field(
        0.5, ge=0, le=1,
        description="checkpoint-too-early when checkpoint_tokens / full_run_tokens is below this.",
        unit="fraction",
    )  # fmt: skip
    decide_on: Literal["base", "sft"] = field(
        "base",
        description="The score that decides the verdict: base (the tasks' primary score) or sft "
        "(the SFT probe: mean over sets of minus the delta of SFT validation loss).",
    )

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        """`predict_tokens` (0.x) was measured no better than the plain delta and removed; a
        study.json of that release records it as null, which still reads."""
        if isinstance(data, dict) and "predict_tokens" in data:
            data = dict(data)
            if data.pop("predict_tokens") is not None:
                raise ValueError(
                    "predict_tokens: was removed: the prediction at a planned length was measured "
                    "no better than the plain delta against a 4x reference (docs/benchmarks.md); "
                    "delete it, and read the trajectory and still-moving instead"
                )
        return data
