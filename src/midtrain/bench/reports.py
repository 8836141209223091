"""Records the subprocess benchmarks share (`bench memory`, `bench gpu`)."""

from __future__ import annotations

from typing import TypedDict


class ChildError(TypedDict):
    """What a measurement subprocess writes (or its parent makes) when the measurement failed."""

    error: str
