"""A study's `[sft_probe]`: SFT sets every run (control, arms, CPT arms) is fine-tuned on.

The probe's settings are the SFT command's (`sft.config.SftSettings`: template, LR grid, epochs,
batches); each set names its own training and validation files. Paths are relative to the study
file. The probe's jobs are planned in `probe/jobs.py`, analysed in `stats/probe_gains.py`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator

from midtrain.errors import MidtrainError
from midtrain.schema import Strict, field
from midtrain.sft.config import SftSettings


class SftSet(Strict):
    """One SFT data set of the probe: its name in tables and folders, its train and val files."""

    name: str = field(description="The set's name in tables and folders (unique, not empty).")
    train: str = field(
        description='Training rows, JSONL: {"prompt", "response"} or {"messages": [...]}.'
    )
    val: str | None = field(
        None, description="Validation rows (same format); omitted: val_fraction of `train`."
    )

    @field_validator("name")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError('is empty; give the set a name, e.g. name = "gsm"')
        return v


class SftProbeSpec(SftSettings):
    """[sft_probe]: fine-tune every run's final checkpoint on each set; score the SFT'd model."""

    sets: list[SftSet] = field(
        min_length=1, description="[[sft_probe.sets]]: the SFT data sets (name, train, val)."
    )
    seeds: list[int] | None = field(
        None,
        description="SFT data-order seeds per run (each is one fine-tune; a run's value is their "
        "mean). Default: the run's own seed.",
    )
    tasks: bool = field(
        False,
        description="Also score the eval tasks after SFT (default: the base mix's held-out "
        "domains only, for forgetting).",
    )
    start: bool = field(
        False, description="Probe the start checkpoint too (a reference; not in any contrast)."
    )

    @field_validator("sets")
    @classmethod
    def _unique(cls, v: list[SftSet]) -> list[SftSet]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"set name {dup[0]!r} is used twice; names must be unique")
        return v

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("give distinct seeds, e.g. seeds = [0, 1], or leave it out")
        return v

    def seeds_for(self, run_seed: int) -> list[int]:
        return list(self.seeds) if self.seeds is not None else [run_seed]

    def resolve(self, res) -> None:  # noqa: ANN001 - a path resolver of the study file
        for s in self.sets:
            s.train = res(s.train)
            s.val = res(s.val) if s.val is not None else None


def probe_problem(cfg) -> tuple[str, str] | None:  # noqa: ANN001 - a StudyConfig
    """(field, message) of a study whose probe or CPT arms contradict its other fields."""
    if cfg.analysis.decide_on == "sft" and cfg.sft_probe is None:
        return (
            "analysis.decide_on",
            '"sft" needs an [sft_probe] section; add one or decide on "base"',
        )
    for i, cand in enumerate(cfg.candidates):
        if cand.continued_pretraining and 1.0 in cfg.fractions_for(cand):
            return (
                f"candidates[{i}].fractions",
                "fraction 1.0 is the continued-pretraining arm already; drop 1.0 from fractions",
            )
    return None


def check_probe_files(probe: SftProbeSpec) -> None:
    """Every set's files exist (before anything is created)."""
    for i, s in enumerate(probe.sets):
        for key in ("train", "val"):
            p = getattr(s, key)
            if p is not None and not Path(p).is_file():
                raise MidtrainError(
                    f"sft_probe.sets[{i}].{key}: {p} not found; give a JSONL file of SFT rows"
                )
