"""The study file: one TOML naming the checkpoint, the base mix, candidates, seeds and the eval suite.

Validated with pydantic; every error becomes one line naming the field and the fix. Paths are
relative to the study file's folder. Config content is data only: nothing in it is executed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from midtrain.errors import MidtrainError

RATIO_TOL = 1e-6


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Strict):
    """A candidate: one source or a small mix of sources, mixed into the base at `fractions`."""

    name: str
    mix: dict[str, float]
    fractions: list[float] | None = None
    max_repetition: float = Field(default=1.0, ge=1.0)

    @field_validator("mix")
    @classmethod
    def _mix_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        if not v:
            raise ValueError("is empty; name at least one source, e.g. mix = {math = 1.0}")
        if any(r < 0 for r in v.values()):
            raise ValueError("has a negative ratio; ratios must be >= 0")
        if abs(sum(v.values()) - 1.0) > RATIO_TOL:
            raise ValueError(f"ratios sum to {sum(v.values()):.6g}; make them sum to 1")
        return v


class Guard(_Strict):
    """A guarded task or domain: the arm may not regress beyond `tolerance` on it."""

    task: str | None = None
    domain: str | None = None
    tolerance: float = Field(default=0.0, ge=0.0)

    @model_validator(mode="after")
    def _one_target(self) -> Guard:
        if (self.task is None) == (self.domain is None):
            raise ValueError("give exactly one of task = '...' or domain = '...'")
        return self


class ScheduleSpec(_Strict):
    name: str = "linear"
    start_lr: float | None = Field(default=None, gt=0)
    final_lr: float | None = Field(default=None, ge=0)
    final_lr_fraction: float | None = Field(default=None, ge=0, le=1)
    warmup_steps: int = Field(default=0, ge=0)


class TaskSetting(_Strict):
    """Per-task overrides of the [eval] defaults (limit, few-shot count, batch size)."""

    limit: int | None = Field(default=None, gt=0)
    num_fewshot: int | None = Field(default=None, ge=0)
    batch_size: int | None = Field(default=None, gt=0)


class EvalSpec(_Strict):
    tasks: list[str] = []
    include_path: str | None = None
    domains: list[str] | None = None  # default: every store
    limit: int | None = Field(default=None, gt=0)
    num_fewshot: int = Field(default=0, ge=0)
    batch_size: int = Field(default=32, gt=0)
    task_settings: dict[str, TaskSetting] = {}  # [eval.task_settings.TASK]


class AnalysisSpec(_Strict):
    primary: Literal["gold_logprob_per_byte", "acc", "acc_norm", "margin"] = "gold_logprob_per_byte"
    bootstrap: int = Field(default=2000, ge=100)
    confidence: float = Field(default=0.95, gt=0.5, lt=1.0)
    min_checkpoint_progress: float = Field(default=0.5, ge=0, le=1)


class StudyConfig(_Strict):
    name: str = "study"
    checkpoint: str
    stores: dict[str, str]
    base: dict[str, float]
    base_max_repetition: float = Field(default=1.0, ge=1.0)
    candidates: list[Candidate]
    fractions: list[float] = [0.3]
    seeds: list[int] = [0, 1]
    tokens: int = Field(gt=0)
    seq_len: int = Field(default=256, gt=1)
    batch_tokens: int = Field(default=4096, gt=0)
    micro_batch: int = Field(default=16, gt=0)
    schedule: ScheduleSpec = ScheduleSpec()
    eval: EvalSpec = EvalSpec()
    analysis: AnalysisSpec = AnalysisSpec()
    guards: list[Guard] = []
    full_run_tokens: int | None = Field(default=None, gt=0)
    checkpoint_tokens: int | None = Field(default=None, ge=0)
    train: dict[str, Any] = {}

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("must be >= 1 (a count) or a list of seeds")
            return list(range(v))
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("is empty; give at least one seed, e.g. seeds = [0, 1]")
        if len(set(v)) != len(v):
            raise ValueError("repeats a seed; list distinct seeds")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, v: list[float]) -> list[float]:
        if not v or any(not 0.0 < f <= 1.0 for f in v):
            raise ValueError("must be a non-empty list of values in (0, 1], e.g. [0.3]")
        return v

    @field_validator("base")
    @classmethod
    def _base_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        return Candidate._mix_sums_to_one(v)

    @field_validator("train")
    @classmethod
    def _train_overrides(cls, v: dict[str, Any]) -> dict[str, Any]:
        owned = {"init", "model", "stores", "mix", "tokens", "seed", "schedule"}
        clash = sorted(owned & set(v))
        if clash:
            raise ValueError(f"may not set {clash[0]!r}; the study sets it for every run")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        known = set(self.stores)
        for i, cand in enumerate(self.candidates):
            for f in cand.fractions or []:
                if not 0.0 < f <= 1.0:
                    raise _FieldError(f"candidates[{i}].fractions", "values must be in (0, 1]")
            for src in cand.mix:
                if src not in known:
                    raise _FieldError(
                        f"candidates[{i}].mix.{src}",
                        f"unknown source; add it to [stores] ({_k(known)})",
                    )
        for src in self.base:
            if src not in known:
                raise _FieldError(
                    f"base.{src}", f"unknown source; add it to [stores] ({_k(known)})"
                )
        names = [c.name for c in self.candidates]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise _FieldError(
                "candidates.name", f"{sorted(dup)[0]!r} is used twice; names must be unique"
            )
        if "control" in names:
            raise _FieldError("candidates.name", "'control' is reserved for the matched control")
        for i, g in enumerate(self.guards):
            if g.domain is not None and g.domain not in known:
                raise _FieldError(f"guards[{i}].domain", f"unknown store; use one of {_k(known)}")
        task_refs = [(f"guards[{i}].task", g.task) for i, g in enumerate(self.guards) if g.task]
        task_refs += [(f"eval.task_settings.{t}", t) for t in self.eval.task_settings]
        for where, task in task_refs:
            if task not in self.eval.tasks:
                raise _FieldError(where, "not in eval.tasks; add it there first")
        for d in self.eval.domains or []:
            if d not in known:
                raise _FieldError(f"eval.domains.{d}", f"unknown store; use one of {_k(known)}")
        if self.tokens < self.batch_tokens:
            raise _FieldError(
                "tokens",
                f"smaller than one step; raise it to >= batch_tokens ({self.batch_tokens})",
            )
        return self

    def fractions_for(self, cand: Candidate) -> list[float]:
        return cand.fractions or self.fractions

    @property
    def domain_names(self) -> list[str]:
        return self.eval.domains if self.eval.domains is not None else sorted(self.stores)


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def _k(names: set[str]) -> str:
    return ", ".join(sorted(names))


def _format_validation_error(e: ValidationError, source: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = err["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if err["type"] == "missing":
        msg = "is required; add it to the study file"
    elif err["type"] == "extra_forbidden":
        msg = "is not a known field; check its spelling (see README: Study file)"
    where = f"{source}: " if source else ""
    return f"{where}{loc + ': ' if loc else ''}{msg}"


def parse_study(
    data: dict[str, Any], source: str = "", base_dir: Path | None = None
) -> StudyConfig:
    """Validate a study dict; paths are resolved against `base_dir` (the study file's folder)."""
    try:
        cfg = StudyConfig.model_validate(data)
    except ValidationError as e:
        raise MidtrainError(_format_validation_error(e, source)) from None
    if base_dir is not None:
        cfg = _resolve_paths(cfg, base_dir)
    return cfg


def _resolve_paths(cfg: StudyConfig, base_dir: Path) -> StudyConfig:
    def res(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base_dir / q).resolve())

    cfg.checkpoint = res(cfg.checkpoint)
    cfg.stores = {k: res(v) for k, v in cfg.stores.items()}
    if cfg.eval.include_path:
        cfg.eval.include_path = res(cfg.eval.include_path)
    return cfg


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file (one-line MidtrainError on any problem)."""
    path = Path(path)
    if not path.is_file():
        raise MidtrainError(f"study file {path} not found; pass the path of a .toml study file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MidtrainError(f"{path}: not valid TOML ({e}); fix the syntax") from None
    return parse_study(data, source=path.name, base_dir=path.parent.resolve())


def check_inputs_exist(cfg: StudyConfig) -> None:
    """Check that the checkpoint, stores and include path exist (before anything is created)."""
    if not (Path(cfg.checkpoint) / "config.json").is_file():
        raise MidtrainError(
            f"checkpoint: {cfg.checkpoint} is not a HF model folder (no config.json); "
            "point it at a folder saved with save_pretrained"
        )
    for name, p in cfg.stores.items():
        if not (Path(p) / "manifest.json").is_file():
            raise MidtrainError(
                f"stores.{name}: {p} is not a token store (no manifest.json); "
                "create it with `midtrain data prepare`"
            )
    if cfg.eval.include_path and not Path(cfg.eval.include_path).is_dir():
        raise MidtrainError(f"eval.include_path: {cfg.eval.include_path} is not a folder")
