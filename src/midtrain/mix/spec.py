"""A mix as data: sources with target ratios and repetition caps, validated with one-line errors.

The study file's `base` and candidate mixes (`{source = ratio}` tables) and a run config's `mix`
list are both checked here, against the same tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from midtrain.errors import MidtrainError
from midtrain.schema import Strict, field, validate

RATIO_TOL = 1e-6


class MixComponent(Strict):
    """One source of a run's mix."""

    model_config = ConfigDict(frozen=True)

    source: str = field(description="Name of a token store listed in `stores`.")
    ratio: float = field(
        description="Share of the run's tokens drawn from this source.", unit="fraction"
    )
    max_repetition: float = field(
        1.0,
        description="Most epochs of the source's training tokens the run may use (1 = no repeat).",
        unit="epochs",
    )


def parse_mix(items: Sequence[MixComponent | Mapping[str, Any]]) -> list[MixComponent]:
    """Components from dicts (TOML/JSON) or models; type errors become `mix[i].field` errors."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, BaseModel) and not isinstance(item, MixComponent):
            item = item.model_dump()
        out.append(
            item
            if isinstance(item, MixComponent)
            else validate(MixComponent, item, prefix=f"mix[{i}]")
        )
    return out


def check_ratios(ratios: Mapping[str, float], what: str = "ratios") -> None:
    """Non-empty, finite, >= 0, summing to 1 within RATIO_TOL (raises ValueError for pydantic)."""
    if not ratios:
        raise ValueError("is empty; name at least one source, e.g. {web = 1.0}")
    bad = [k for k, r in ratios.items() if not (math.isfinite(r) and r >= 0)]
    if bad:
        raise ValueError(
            f"{bad[0]} = {ratios[bad[0]]} is not a ratio; ratios must be finite and >= 0"
        )
    total = sum(ratios.values())
    if abs(total - 1.0) > RATIO_TOL:
        raise ValueError(f"{what} sum to {total:.6g}, not 1 (tolerance {RATIO_TOL}); rescale them")


def validate_mix(
    components: Sequence[MixComponent | Mapping[str, Any]], available: set[str]
) -> list[MixComponent]:
    """Check sources, ratios and caps; raise a one-line `MidtrainError` naming the field."""
    mix = parse_mix(components)
    if not mix:
        raise MidtrainError("mix: empty; add at least one {source, ratio} entry")
    seen: dict[str, int] = {}
    for i, c in enumerate(mix):
        if c.source not in available:
            have = ", ".join(sorted(available)) or "none"
            raise MidtrainError(f"mix[{i}].source: unknown source {c.source!r}; available: {have}")
        if c.source in seen:
            raise MidtrainError(
                f"mix[{i}].source: {c.source!r} is already mix[{seen[c.source]}]; merge the two"
            )
        seen[c.source] = i
        if c.ratio < 0:
            raise MidtrainError(f"mix[{i}].ratio: {c.ratio} is negative; ratios must be >= 0")
        if not c.max_repetition >= 1:
            raise MidtrainError(
                f"mix[{i}].max_repetition: {c.max_repetition} < 1; use 1 (one epoch) or more"
            )
    try:
        check_ratios({c.source: c.ratio for c in mix})
    except ValueError as e:
        raise MidtrainError(f"mix[*].ratio: {e}") from None
    return mix
