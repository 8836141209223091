"""A study's finished runs as the statistics read them: per-example records by group, and the
[runs, examples] matrices built from them (`StudyData`, `build_quantity`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from midtrain.eval.results import Examples
from midtrain.stats import contrast
from midtrain.study.config import CONTROL


@dataclass
class StudyData:
    """The finished runs' per-example records by group ("control" and each arm)."""

    groups: dict[str, list[Examples]]
    start: Examples | None
    seeds: dict[str, list[int]] | None = None  # each run's seed (default: k-th run, seed k)
    designs: dict[str, str] = field(default_factory=dict)  # arm -> its design ("0.3", "cpt")
    _cache: dict[tuple, contrast.Quantity | None] = field(default_factory=dict, repr=False)

    def peers(self, arm: str) -> list[str]:
        """The arms of `arm`'s design (same fraction, or continued pretraining): their paired
        differences from the control pool the run-to-run variance of `arm`'s contrasts."""
        key = self.designs.get(arm)
        if key is None:
            return [arm]
        return [g for g in self.groups if g != CONTROL and self.designs.get(g) == key]

    def quantity(
        self, kind: Literal["tasks", "domains"], key: str, metric: str, groups: Sequence[str]
    ) -> contrast.Quantity | None:
        """[runs, examples] per group on the examples every run of these groups has (built once
        per study: every arm's contrasts share it)."""
        k = (kind, key, metric, tuple(groups))
        if k not in self._cache:
            self._cache[k] = self._quantity(kind, key, metric, groups)
        return self._cache[k]

    def has(self, task: str, metric: str) -> bool:
        """Whether `task`'s records carry `metric` (in the first run that evaluated the task)."""
        for runs in self.groups.values():
            for ex in runs:
                vals = ex.values("tasks", task, metric)
                if vals is not None:
                    return bool(vals)
        return False

    def score_metric(self, task: str) -> str | None:
        """What the task's per-example `score` is (acc, exact_match, pass@1), from its records."""
        for ex in (e for runs in self.groups.values() for e in runs):
            if task in ex.tasks:
                return ex.score_metric(task)
        return None

    def _quantity(
        self, kind: Literal["tasks", "domains"], key: str, metric: str, groups: Sequence[str]
    ) -> contrast.Quantity | None:
        tables = {g: [ex.values(kind, key, metric) for ex in self.groups[g]] for g in groups}
        seeds = {g: self.seeds[g] for g in groups} if self.seeds else None
        return build_quantity(tables, seeds)


def build_quantity(
    tables: dict[str, list[dict | None]], seeds: dict[str, list[int]] | None
) -> contrast.Quantity | None:
    """A Quantity from each group's runs' {example id: value} tables, on the examples every run
    has (None when a run has no table or no example is common)."""
    flat = [t for ts in tables.values() for t in ts]
    if not flat or any(t is None for t in flat):
        return None
    ids = set.intersection(*(set(t) for t in flat))
    if not ids:
        return None
    order = sorted(ids, key=lambda x: (str(type(x)), x))
    mats = {g: np.array([[t[i] for i in order] for t in ts], dtype=np.float64)
            for g, ts in tables.items()}  # fmt: skip
    return contrast.Quantity(mats, seeds)
