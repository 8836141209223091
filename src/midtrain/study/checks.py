"""The checks a `StudyConfig` runs on itself across its sections (names, references, fractions,
starts, the external trainer, the SFT probe); each error names its field."""

from __future__ import annotations

from typing import TYPE_CHECKING

from midtrain.probe.config import probe_problem
from midtrain.study.sections import CONTROL

if TYPE_CHECKING:
    from midtrain.study.config import StudyConfig


class FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")


def check_fractions(v: list[float], where: str = "") -> None:
    if not v or any(not 0.0 < f <= 1.0 for f in v):
        msg = "must be a non-empty list of values in (0, 1], e.g. [0.3]"
        raise FieldError(where, msg) if where else ValueError(msg)


def check_not_base(cfg: StudyConfig) -> None:
    """A candidate whose mix is the base mix would only retrain the control."""
    base = {k: v for k, v in cfg.base.items() if v > 0}
    for i, cand in enumerate(cfg.candidates):
        mix = {k: v for k, v in cand.mix.items() if v > 0}
        if mix.keys() == base.keys() and all(abs(mix[k] - base[k]) < 1e-9 for k in mix):
            raise FieldError(
                f"candidates[{i}].mix",
                "equals the base mix, so every arm of it would retrain the control; "
                "name other sources (for an A/A check use `midtrain bench calibrate`)",
            )


def check_starts_mode(cfg: StudyConfig) -> None:
    """to_end runs every start to the end of the full run: it needs the full run and starts."""
    if cfg.starts_mode != "to_end":
        return
    if cfg.full_run_tokens is None:
        raise FieldError("starts_mode", '"to_end" trains each start to the end of the full run; '
                          "set full_run_tokens (the full run's tokens)")  # fmt: skip
    if not cfg.starts:
        raise FieldError("starts_mode", '"to_end" applies to the starts of a timing grid; add '
                          'starts = [...] or remove starts_mode')  # fmt: skip


def check_command(cfg: StudyConfig) -> None:
    """`[train] command`: a usable template, and no option only midtrain's own loop can honour."""
    if "command" not in cfg.train:
        return
    from midtrain.train.external import command_problem

    if (problem := command_problem(cfg.train["command"])) is not None:
        raise FieldError("train.command", problem)
    if cfg.resources.processes > 1:
        raise FieldError("resources.processes", "an external trainer ([train] command) runs once "
                          "per run and parallelises itself; remove processes (or set 1)")  # fmt: skip
    if cfg.eval.point_fractions[:-1]:
        raise FieldError("eval.points", "an external trainer ([train] command) writes only the "
                          "final checkpoint; remove the points before 1.0, or the command")  # fmt: skip


def check_probe(cfg: StudyConfig) -> None:
    if (problem := probe_problem(cfg)) is not None:
        raise FieldError(*problem)


def check_names(cfg: StudyConfig) -> None:
    names = [c.name for c in cfg.candidates]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise FieldError(f"candidates[{i}].name", f"{n!r} is used twice; names must be unique")
        if n == CONTROL:
            raise FieldError(
                f"candidates[{i}].name", f"{CONTROL!r} is reserved for the matched control"
            )


def check_references(cfg: StudyConfig) -> None:
    """Every source, store, guard and task a field names must exist."""
    known = set(cfg.stores)
    have = ", ".join(sorted(known))
    refs = [(f"base.{s}", s) for s in cfg.base]
    for i, cand in enumerate(cfg.candidates):
        if cand.fractions is not None:
            check_fractions(cand.fractions, f"candidates[{i}].fractions")
        refs += [(f"candidates[{i}].mix.{s}", s) for s in cand.mix]
    refs += [(f"source_max_repetition.{s}", s) for s in cfg.source_max_repetition]
    refs += [(f"guards[{i}].domain", g.domain) for i, g in enumerate(cfg.guards) if g.domain]
    refs += [(f"eval.domains[{i}]", d) for i, d in enumerate(cfg.eval.domains or [])]
    for where, name in refs:
        if name not in known:
            raise FieldError(where, f"unknown source {name!r}; add it to [stores] ({have})")
    task_refs = [(f"guards[{i}].task", g.task) for i, g in enumerate(cfg.guards) if g.task]
    task_refs += [(f"candidates[{i}].targets[{j}]", t) for i, c in enumerate(cfg.candidates)
                  for j, t in enumerate(c.targets)]  # fmt: skip
    task_refs += [(f"eval.task_settings.{t}", t) for t in cfg.eval.task_settings]
    for where, task in task_refs:
        if task not in cfg.eval.tasks:
            raise FieldError(where, "not in eval.tasks; add it there first")
