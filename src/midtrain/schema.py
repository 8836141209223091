"""The config schema's building blocks: one strict base model, documented fields, one error format.

Every config model (run, study, eval, analysis, guards) derives from `Strict` and declares its
fields with `field(...)`, which records a description and a unit in the JSON schema; `midtrain
config docs` renders docs/config.md from them. `validate()` turns the first pydantic error into the
one-line `MidtrainError` that every command prints: `<source>: <field.path>: <what>; <fix>`
with list indexes as `[i]` and a "did you mean" for a misspelt field.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

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


def error_message(e: ValidationError, source: str = "", prefix: str = "", model: Any = None) -> str:
    """One error of `e` as `source: prefix.field.path: message` (pydantic's wording trimmed).

    An unknown field is reported first (a misspelt `token =` also makes `tokens` missing), with a
    "did you mean" from the names of the model it was written in. Paths are dotted, list indexes
    in brackets (`candidates[0].fraction`); pydantic's union-member tags are left out.
    """
    errors = e.errors()
    err = next((x for x in errors if x["type"] == "extra_forbidden"), errors[0])
    path, names = field_path(model, err["loc"])
    loc = join_path(prefix, path)
    msg = str(err["msg"])
    for lead in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(lead)
    if err["type"] == "missing":
        msg = "is required; add it"
    elif err["type"] == "extra_forbidden":
        msg = f"is not a known field; {did_you_mean(str(err['loc'][-1]), names)}"
    elif err["type"] == "finite_number" or _non_finite(err.get("input")):
        msg = f"{err.get('input')!r} is not a finite number; give a number"
    where = f"{source}: " if source else ""
    return f"{where}{loc + ': ' if loc else ''}{msg}"


def did_you_mean(name: str, names: list[str] | None) -> str:
    """The fix for an unknown field `name`: the closest known name, else where they are listed."""
    close = difflib.get_close_matches(name, names or [], n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]!r}?"
    return "check its spelling (docs/config.md lists every field)"


def join_path(prefix: str, path: str) -> str:
    """`prefix` and a field path as one dotted path (`mix[0]` + `ratio` = `mix[0].ratio`)."""
    if not prefix or not path:
        return prefix or path
    return prefix + path if path.startswith("[") else f"{prefix}.{path}"


def field_path(model: Any, loc: tuple) -> tuple[str, list[str] | None]:
    """(the dotted path of an error location, the field names of the model its last part is in).

    The location is walked through the model's annotations, so union-member tags such as
    `list[int]` (not fields) are dropped and list indexes become `[i]`.
    """
    path, names, tp = "", None, model
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
            tp = _item_type(tp)
            continue
        cls = next((o for o in _options(tp) if _is_model(o)), None)
        if cls is not None:
            names = _names(cls)
            fields = {f.alias or n: f for n, f in cls.model_fields.items()} | cls.model_fields
            tp = fields[part].annotation if part in fields else None
        elif any(get_origin(o) is dict for o in _options(tp)):
            tp = next(get_args(o)[1] for o in _options(tp) if get_origin(o) is dict)
        elif tp is not None and tp is not Any:
            continue  # a union-member tag, not a field
        path = join_path(path, str(part))
    return path, names


def _options(tp: Any) -> list[Any]:
    """The alternatives of a (possibly Optional / Annotated / union) annotation."""
    if tp is None:
        return []
    origin = get_origin(tp)
    if origin is Annotated:
        return _options(get_args(tp)[0])
    if origin in (Union, UnionType):
        return [o for a in get_args(tp) for o in _options(a)]
    return [tp]


def _item_type(tp: Any) -> Any:
    for o in _options(tp):
        if get_origin(o) in (list, tuple, set, frozenset) and get_args(o):
            return get_args(o)[0]
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _names(cls: type[BaseModel]) -> list[str]:
    """A model's field names and their aliases."""
    return [*cls.model_fields, *(f.alias for f in cls.model_fields.values() if f.alias)]


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def validate(model: type[M], data: Any, source: str = "", prefix: str = "") -> M:
    """`model.model_validate(data)`, with a one-line `MidtrainError` on the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise MidtrainError(error_message(e, source, prefix, model)) from None


def load_toml(path: str | Path, what: str) -> dict[str, Any]:  # TOML as parsed
    """A TOML file's content as data (nothing in it is executed); one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise MidtrainError(f"{what} {path}: no such file; pass the path of a .toml file")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise MidtrainError(f"{path.name}: not valid TOML ({e}); fix the syntax") from None


def load_config(cls: type[M], src: Any, source: str) -> tuple[M, Path | None]:
    """A config model from a TOML file or a mapping, and the folder its relative paths are
    relative to: the file's folder, the working directory for a mapping, None when `src` is
    already a model (its paths were resolved when it was made). Errors begin with the file's
    name (`run.toml: field: ...`), or with `source` for a mapping."""
    if isinstance(src, cls):
        return src, None
    base = Path.cwd()
    if isinstance(src, str | Path):
        path = Path(src)
        src, source = load_toml(path, "--config"), path.name
        base = path.resolve().parent
    return validate(cls, dict(src), source=source), base


def absolute_path(base: Path, p: str | None) -> str | None:
    """`p` resolved against `base` (with ~ expanded); None stays None."""
    return None if p is None else str((base / Path(p).expanduser()).resolve())
