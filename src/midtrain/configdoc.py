"""docs/config.md, generated from the config schema (`midtrain config docs`).

One table per config model: field, type, default, unit, description. A test regenerates the page
and fails when the committed file differs, so the reference cannot go stale.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

HEADER = """# Config reference

Generated from the schema by `midtrain config docs` (do not edit by hand). Every config is strict:
an unknown field is an error. Units: `tokens`, `steps`, `sequences`, `epochs` (passes over a
source's training tokens), `fraction` (0..1), `LR` (learning rate), `examples`.

- **Run config** (`midtrain anneal|pretrain --config FILE`): [RunConfig](#runconfig) with
  [ScheduleConfig](#scheduleconfig), [OptimizerConfig](#optimizerconfig),
  [MixComponent](#mixcomponent) and [TrackersConfig](#trackersconfig).
- **Study file** (`midtrain study run FILE`): [StudyConfig](#studyconfig) with
  [Candidate](#candidate), [Guard](#guard), [EvalSpec](#evalspec) (with [TaskSetting](#tasksetting)),
  [AnalysisSpec](#analysisspec), [ScheduleConfig](#scheduleconfig) and
  [SftProbeSpec](#sftprobespec) (with [SftSet](#sftset); its settings are [SftConfig](#sftconfig)'s),
  [Resources](#resources) and [KeepSpec](#keepspec).
- **SFT config** (`midtrain sft CKPT --config FILE`, the `sft` stage): [SftConfig](#sftconfig) with
  [SftTemplate](#sfttemplate) and [OptimizerConfig](#optimizerconfig) (docs/sft.md).
"""


def models() -> list[type[BaseModel]]:
    from midtrain.eval.api import TaskSetting
    from midtrain.mix.spec import MixComponent
    from midtrain.probe.config import SftProbeSpec, SftSet
    from midtrain.sft.config import SftConfig, SftTemplate
    from midtrain.study.config import AnalysisSpec, Candidate, EvalSpec, Guard, StudyConfig
    from midtrain.study.executors import Resources
    from midtrain.study.keep import KeepSpec
    from midtrain.train.config import OptimizerConfig, RunConfig, ScheduleConfig
    from midtrain.train.trackers import TrackersConfig

    return [
        RunConfig, ScheduleConfig, OptimizerConfig, MixComponent, TrackersConfig,
        StudyConfig, Candidate, Guard, EvalSpec, TaskSetting, AnalysisSpec, SftProbeSpec, SftSet,
        SftConfig, SftTemplate, Resources, KeepSpec,
    ]  # fmt: skip


def type_name(t: Any) -> str:
    """A short, readable name of a field's annotation."""
    origin = typing.get_origin(t)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(t))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(t))
    if origin is not None:
        args = ", ".join(type_name(a) for a in typing.get_args(t))
        return f"{getattr(origin, '__name__', str(origin))}[{args}]"
    if t is type(None):
        return "None"
    return getattr(t, "__name__", str(t))


def default_text(f: Any) -> str:
    if f.default is PydanticUndefined and f.default_factory is None:
        return "required"
    value = f.default_factory() if f.default_factory is not None else f.default
    if isinstance(value, BaseModel):
        return "(table)"
    return f"`{value!r}`".replace("|", "\\|")


def model_table(model: type[BaseModel]) -> str:
    lines = [f"## {model.__name__}", "", (model.__doc__ or "").strip(), ""]
    lines += ["| field | type | default | unit | description |", "|---|---|---|---|---|"]
    for name, f in model.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        cells = [
            f"`{name}`", type_name(f.annotation).replace("|", "\\|"), default_text(f),
            str(extra.get("unit", "")), (f.description or "").replace("|", "\\|"),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render() -> str:
    return HEADER + "\n" + "\n".join(model_table(m) for m in models())


def undocumented() -> list[str]:
    """Fields without a description (a test asserts there are none)."""
    return [
        f"{m.__name__}.{name}"
        for m in models()
        for name, f in m.model_fields.items()
        if not f.description
    ]
