"""The study file: one TOML naming the checkpoint, the base mix, candidates, seeds and the eval suite.

Validated with pydantic; every error becomes one line naming the field and the fix. Paths are
relative to the study file's folder. Config content is data only: nothing in it is executed, except
`[train] command`, the user's own trainer (train/external.py), run for every run when it is set.
A study validates itself (`check_inputs` looks at the files it names); each run of it is
validated by the run's own planner when the study is prepared.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import PrivateAttr, field_validator, model_validator

from midtrain.errors import MidtrainError
from midtrain.mix.spec import check_ratios
from midtrain.probe.config import SftProbeSpec, check_probe_files
from midtrain.schema import Strict, field, load_toml, validate
from midtrain.study.checks import (
    FieldError,
    check_command,
    check_fractions,
    check_names,
    check_not_base,
    check_probe,
    check_references,
    check_starts_mode,
)
from midtrain.study.executors import Resources
from midtrain.study.keep import KeepSpec
from midtrain.study.sections import (  # noqa: F401 - CONTROL: the rest of the code reads it here
    CONTROL,
    RUN_OWNED,
    AnalysisSpec,
    Candidate,
    EvalSpec,
    Guard,
)
from midtrain.train.config import ScheduleConfig

if TYPE_CHECKING:
    from midtrain.data.store import TokenStore


class StudyConfig(Strict):
    """A microanneal study: a control plus candidate arms from one checkpoint."""

    name: str = field("study", description="The study's name in reports.")
    checkpoint: str = field(description="HF causal-LM folder the anneals start from.")
    stores: dict[str, str] = field(description="Token store folders by source name.")
    base: dict[str, float] = field(
        description="{source = ratio}: the normal pretraining mix; the control trains on it alone."
    )
    base_max_repetition: float = field(
        1.0, ge=1.0, description="Most epochs of each base source's tokens per run.", unit="epochs"
    )
    candidates: list[Candidate] = field(description="[[candidates]]: the data under test.")
    fractions: list[float] = field(
        [0.3], description="Default shares of the anneal mix given to a candidate.", unit="fraction"
    )
    seeds: list[int] | Literal["auto"] = field(
        [0, 1],
        description='Data-order seeds: one control and one run per arm each (or a count); "auto" '
        "starts with 2 and adds seeds to inconclusive arms up to analysis.max_seeds.",
    )
    tokens: int = field(gt=0, description="Anneal tokens per run.", unit="tokens")
    seq_len: int = field(256, gt=1, description="Tokens per training sequence.", unit="tokens")
    batch_tokens: int = field(4096, gt=0, description="Tokens per optimizer step.", unit="tokens")
    micro_batch: int = field(
        16, gt=0, description="Sequences per forward/backward.", unit="sequences"
    )
    schedule: ScheduleConfig = field(ScheduleConfig(), description="The cooldown's LR schedule.")
    paired_streams: bool = field(
        True,
        description="Common random numbers: an arm's base-mix sequences are its control's, at the "
        "same steps; its candidate's tokens take the steps they free (docs/studies.md). false: "
        "each run draws its own mix order.",
    )
    eval: EvalSpec = field(EvalSpec(), description="Tasks and domains every run is scored on.")
    analysis: AnalysisSpec = field(AnalysisSpec(), description="Statistics and verdict rules.")
    guards: list[Guard] = field(
        [], description="[[guards]]: tasks or domains that may not regress."
    )
    full_run_tokens: int | None = field(
        None, gt=0, description="Tokens of the full training run (for cost shares).", unit="tokens"
    )
    checkpoint_tokens: int | None = field(
        None, ge=0,
        description="Tokens the checkpoint has seen (default: its midtrain_state).",
        unit="tokens",
    )  # fmt: skip
    sft_probe: SftProbeSpec | None = field(
        None, description="[sft_probe]: fine-tune every run on SFT sets (docs/studies.md)."
    )
    train: dict[str, Any] = field(  # run-config fields, validated per run; and `command`
        {},
        description="Other run-config fields for every run (e.g. threads, compile); and `command`: "
        "an external trainer run for every run instead of midtrain's loop, a template with {spec}, "
        "{out} and {checkpoint} (a string for the shell, or a list of strings run without one; "
        "docs/external.md).",
    )
    source_max_repetition: dict[str, float] = field(
        {},
        description="{source = epochs}: per-source repetition caps that override "
        "base_max_repetition and the candidates' max_repetition.",
        unit="epochs",
    )
    merge_seeds: bool | list[str] = field(
        False,
        description="Merge the seeds of every arm (true) or of the arms named (e.g. "
        '["math@0.3"]) into one checkpoint, evaluate it and compare it with each seed.',
    )
    starts: list[str] = field(
        [],
        description="Earlier start checkpoints along the stable phase (timing x weight): the "
        "whole study runs from `checkpoint` and from each of these, each with its own control, "
        "and grid.md crosses start with fraction.",
    )
    starts_mode: Literal["cooldown", "to_end"] = field(
        "cooldown",
        description="How each start of `starts` trains: cooldown (every start the study's own "
        "`tokens` and [schedule]) or to_end (Liu et al.: each start trains to full_run_tokens, "
        "its own tokens seen subtracted, on its checkpoint's schedule continued; docs/studies.md).",
    )
    reuse: list[str] = field(
        [],
        description="Study folders whose finished runs are reused (hard-linked) when a run of "
        "this study has the same identity (same inputs, mix, tokens, seed and schedule).",
    )
    resources: Resources = field(
        Resources(),
        description="[resources]: what each run's Ray task or Slurm job asks for (docs/scaling.md).",
    )
    keep: KeepSpec = field(
        KeepSpec(),
        description="[keep]: which checkpoints stay once nothing reads them (docs/studies.md).",
    )

    _source: str = PrivateAttr("")  # the study file's name: the prefix of its errors
    _base_dir: str = PrivateAttr("")  # the study file's folder: where [train] command runs

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_count(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":
            raise ValueError(f'{v!r}: give a list of seeds, a count, or "auto"')
        if isinstance(v, int) and not isinstance(v, bool):
            if v < 1:
                raise ValueError("must be >= 1 (a count) or a list of seeds")
            return list(range(v))
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, v: list[int] | str) -> list[int] | str:
        if v == "auto":
            return v
        if not v:
            raise ValueError("is empty; give at least one seed, e.g. seeds = [0, 1]")
        if len(set(v)) != len(v):
            raise ValueError("repeats a seed; list distinct seeds")
        return v

    @field_validator("fractions")
    @classmethod
    def _fractions_in_range(cls, v: list[float]) -> list[float]:
        check_fractions(v)
        return v

    @field_validator("base")
    @classmethod
    def _base_sums_to_one(cls, v: dict[str, float]) -> dict[str, float]:
        check_ratios(v)
        return v

    @field_validator("source_max_repetition")
    @classmethod
    def _caps_at_least_one(cls, v: dict[str, float]) -> dict[str, float]:
        for src, cap in v.items():
            if not cap >= 1.0:
                raise ValueError(f"{src} = {cap}: a repetition cap must be >= 1 epoch")
        return v

    @field_validator("train")
    @classmethod
    def _train_overrides(cls, v: dict[str, Any]) -> dict[str, Any]:  # run-config fields
        clash = sorted(set(RUN_OWNED) & set(v))
        if clash:
            raise ValueError(f"may not set {clash[0]!r}; the study sets it for every run")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> StudyConfig:
        check_names(self)
        check_references(self)
        check_not_base(self)
        check_probe(self)
        check_starts_mode(self)
        check_command(self)
        if self.analysis.allow_task_regression and not self.eval.tasks:
            raise FieldError(
                "analysis.allow_task_regression",
                "there are no eval.tasks whose regression it could allow; add tasks or remove it",
            )
        if self.tokens < self.batch_tokens:
            raise FieldError(
                "tokens",
                f"smaller than one step; raise it to >= batch_tokens ({self.batch_tokens})",
            )
        return self

    @property
    def command(self) -> str | list[str] | None:
        """`[train] command`: the external trainer every run uses, or None (midtrain's loop)."""
        return self.train.get("command")

    @property
    def base_dir(self) -> str | None:
        """The study file's folder (where `[train] command` runs), or None for a study in code."""
        return self._base_dir or None

    @property
    def run_overrides(self) -> dict[str, Any]:  # run-config fields, validated per run
        """[train] without `command`: the run-config fields it sets for every run."""
        return {k: v for k, v in self.train.items() if k != "command"}

    @property
    def source(self) -> str:
        """The study file's name, the prefix of its errors ("" for a study made in code)."""
        return self._source

    def fractions_for(self, cand: Candidate) -> list[float]:
        return cand.fractions or self.fractions

    @property
    def first_seeds(self) -> list[int]:
        """The seeds every arm starts with (seeds = "auto": 0 and 1)."""
        return [0, 1] if self.seeds == "auto" else list(self.seeds)

    @property
    def looks(self) -> int:
        """How many times the arms may be analysed: 1, or with "auto" one per seed from 2 on."""
        return self.analysis.max_seeds - 1 if self.seeds == "auto" else 1

    @property
    def domain_names(self) -> list[str]:
        return self.eval.domains if self.eval.domains is not None else sorted(self.stores)


def parse_study(
    data: dict[str, Any],  # the study file's TOML (or study.json's config) as read
    source: str = "",
    base_dir: Path | None = None,
) -> StudyConfig:
    """Validate a study dict; paths are resolved against `base_dir` (the study file's folder)."""
    cfg = validate(StudyConfig, data, source=source)
    cfg._source = source
    cfg._base_dir = str(base_dir) if base_dir is not None else ""
    return _resolve_paths(cfg, base_dir) if base_dir is not None else cfg


def _resolve_paths(cfg: StudyConfig, base_dir: Path) -> StudyConfig:
    def res(p: str) -> str:
        q = Path(p).expanduser()
        return str(q if q.is_absolute() else (base_dir / q).resolve())

    cfg.checkpoint = res(cfg.checkpoint)
    cfg.stores = {k: res(v) for k, v in cfg.stores.items()}
    cfg.reuse = [res(p) for p in cfg.reuse]
    cfg.starts = [res(p) for p in cfg.starts]
    if cfg.eval.include_path:
        cfg.eval.include_path = res(cfg.eval.include_path)
    if cfg.eval.select_from:
        cfg.eval.select_from = res(cfg.eval.select_from)
    if cfg.sft_probe is not None:
        cfg.sft_probe.resolve(res)
    return cfg


def load_study(path: str | Path) -> StudyConfig:
    """Read and validate a study TOML file (one-line MidtrainError on any problem)."""
    path = Path(path)
    data = load_toml(path, "study file")
    return parse_study(data, source=path.name, base_dir=path.parent.resolve())


def check_inputs(cfg: StudyConfig) -> dict[str, TokenStore]:
    """The checkpoint, stores and include path exist, every eval domain's store was tokenised
    like the checkpoint, and no candidate's store holds special tokens it does not allow (before
    anything is created). Returns the opened stores."""
    from midtrain.data.store import open_store
    from midtrain.study.plaintext import check_candidate_stores
    from midtrain.train.checkpoint import check_hf_folder

    check_hf_folder(cfg.checkpoint, "checkpoint")
    for i, p in enumerate(cfg.starts):
        check_hf_folder(p, f"starts[{i}]")
    # reads and checks each manifest and its files
    stores = {name: open_store(p, f"stores.{name}") for name, p in cfg.stores.items()}
    _check_domain_tokenizers(cfg, {d: stores[d] for d in cfg.domain_names})
    check_candidate_stores(cfg, stores)
    if cfg.eval.include_path and not Path(cfg.eval.include_path).is_dir():
        raise MidtrainError(f"eval.include_path: {cfg.eval.include_path} is not a folder")
    if cfg.eval.select_from and not (Path(cfg.eval.select_from) / "results.json").is_file():
        raise MidtrainError(f"eval.select_from: {cfg.eval.select_from} has no results.json; "
                            "give the folder of a finished study")  # fmt: skip
    if cfg.sft_probe is not None:
        check_probe_files(cfg.sft_probe)
    return stores


def _check_domain_tokenizers(cfg: StudyConfig, domains: dict[str, TokenStore]) -> None:
    """A store scored as an eval domain must share the checkpoint's tokenizer, as a training
    store must (the run planner checks those): else every run would train, then fail its
    evaluation."""
    from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash

    if not domains:
        return
    ref = tokenizer_hash(load_tokenizer(cfg.checkpoint))
    for name, store in domains.items():
        if store.tokenizer_hash != ref:
            raise MidtrainError(
                f"stores.{name}: scored as an eval domain but tokenised with tokenizer "
                f"{store.tokenizer_hash[:12]}, not the checkpoint's ({ref[:12]}); re-prepare it "
                f"with --tokenizer {cfg.checkpoint}, or leave it out of eval.domains"
            )
