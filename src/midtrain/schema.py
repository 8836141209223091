"""The config schema's building blocks: one strict base model, documented fields, one error format.

Every config model (run, study, eval, analysis, guards) derives from `Strict` and declares its
fields with `field(...)`, which records a description and a unit in the JSON schema; `midtrain
config docs` renders docs/config.md from them. `validate()` turns the first pydantic error into the
one-line `MidtrainError` that every command prints: `<source>: <field>: <what>; <fix>`.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from midtrain.errors import MidtrainError

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """A config model: unknown fields are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def field(default: Any = ..., description: str = "", unit: str = "", **kwargs: Any) -> Any:
    """A pydantic Field with a description and a unit (shown in docs/config.md)."""
    extra = {"unit": unit} if unit else None
    return Field(default, description=description, json_schema_extra=extra, **kwargs)


def error_message(e: ValidationError, source: str = "", prefix: str = "") -> str:
    """The first error of `e` as `source: prefix.field: message` (pydantic's wording trimmed)."""
    err = e.errors()[0]
    loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
    msg = str(err["msg"])
    for lead in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(lead)
    if err["type"] == "missing":
        msg = "is required; add it"
    elif err["type"] == "extra_forbidden":
        msg = "is not a known field; check its spelling (docs/config.md lists every field)"
    elif err["type"] == "finite_number" or _non_finite(err.get("input")):
        msg = f"{err.get('input')!r} is not a finite number; give a number"
    where = f"{source}: " if source else ""
    return f"{where}{loc + ': ' if loc else ''}{msg}"


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def validate(model: type[M], data: Any, source: str = "", prefix: str = "") -> M:
    """`model.model_validate(data)`, with a one-line `MidtrainError` on the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MidtrainError(error_message(e, source, prefix)) from None


def load_toml(path: str | Path, what: str) -> dict[str, Any]:
    """A TOML file's content as data (nothing in it is executed); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise MidtrainError(f"{what} {path}: no such file; pass the path of a .toml file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MidtrainError(f"{path}: not valid TOML ({e}); fix the syntax") from None


def load_config(cls: type[M], src: Any, source: str) -> tuple[M, Path | None]:
    """A config model from a TOML file or a mapping, and the folder its relative paths are
    relative to: the file's folder, the working directory for a mapping, None when `src` is
    already a model (its paths were resolved when it was made)."""
    if isinstance(src, cls):
        return src, None
    base = Path.cwd()
    if isinstance(src, str | Path):
        path = Path(src)
        src = load_toml(path, "--config")
        base = path.resolve().parent
    return validate(cls, dict(src), source=source), base


def absolute_path(base: Path, p: str | None) -> str | None:
    """`p` resolved against `base` (with ~ expanded); None stays None."""
    return None if p is None else str((base / Path(p).expanduser()).resolve())
