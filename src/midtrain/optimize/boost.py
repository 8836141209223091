"""The gradient-boosted alternative to the mixing law (`--model gbm`).

scikit-learn's `GradientBoostingRegressor` (small trees, seeded), or LightGBM's when it is installed
and scikit-learn is not. Uncertainty: a seeded bootstrap over the points (`BOOT` refits); the se
of a prediction is the bootstrap sd. Cross-validation leaves one mix out, as for the law. Trees are
piecewise constant: they cannot extrapolate at all and give the optimiser no gradient, so the
proposal searches seeded random mixes inside the trust region instead of following a slope
(`solve` does this when the model says `smooth = False`). Too few points (< `MIN_POINTS`) and it
is not fitted: a note says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from midtrain.errors import MidtrainError

MIN_POINTS = 20
BOOT = 30


def _regressor(seed: int) -> Any:
    try:
        from sklearn.ensemble import GradientBoostingRegressor
    except ImportError:
        try:
            from lightgbm import LGBMRegressor
        except ImportError:
            return None
        return LGBMRegressor(n_estimators=150, num_leaves=4, learning_rate=0.05, min_child_samples=3,
                             random_state=seed, verbose=-1)  # fmt: skip
    return GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.05,
                                     subsample=0.8, random_state=seed)  # fmt: skip


def available() -> str | None:
    """Why the boosted model cannot be used here (None when it can)."""
    if _regressor(0) is None:
        return "neither scikit-learn nor lightgbm is installed (pip install scikit-learn)"
    return None


@dataclass
class BoostedModel:
    sources: list[str]
    models: list[Any]  # [0] fitted on every point, the rest on bootstrap resamples
    n: int
    mixes: int
    loo_rmse: float | None = None
    loo_n: int = 0
    loo_worst: tuple[int, float] | None = None
    kind: str = "gbm"
    smooth: bool = False
    notes: list[str] = field(default_factory=list)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.models[0].predict(np.atleast_2d(x))

    def _boot(self, x: np.ndarray) -> np.ndarray:
        return np.array([m.predict(np.atleast_2d(x)) for m in self.models[1:]])

    def se(self, x: np.ndarray) -> np.ndarray:
        return self._boot(x).std(axis=0, ddof=1)

    def delta(self, x: np.ndarray, x0: np.ndarray) -> tuple[float, float]:
        d = float(self.predict(x)[0] - self.predict(x0)[0])
        b = self._boot(x)[:, 0] - self._boot(x0)[:, 0]
        return d, float(b.std(ddof=1))

    def describe(self) -> str:
        return f"{type(self.models[0]).__name__}, {BOOT} bootstrap refits"


def fit_boosted(x: np.ndarray, y: np.ndarray, sources: list[str], seed: int = 0,
                metric: str = "primary") -> BoostedModel:  # fmt: skip
    """Fit on every point, then on `BOOT` seeded bootstrap resamples; leave-one-mix-out CV."""
    why = available()
    if why:
        raise MidtrainError(f"--model gbm: {why}; or use --model loglinear")
    if len(y) < MIN_POINTS:
        raise MidtrainError(f"--model gbm: {metric} has {len(y)} points; a boosted model needs at least "
                            f"{MIN_POINTS}; use --model loglinear or run more arms")  # fmt: skip
    rng = np.random.default_rng(seed)
    models = [_regressor(seed).fit(x, y)]
    for b in range(BOOT):
        idx = rng.integers(0, len(y), len(y))
        models.append(_regressor(seed + 1 + b).fit(x[idx], y[idx]))
    keys = [tuple(np.round(row, 9)) for row in x]
    uniq = sorted(set(keys))
    errs = []
    for k in uniq:
        out = np.array([kk == k for kk in keys])
        if (~out).sum() >= 2:
            m = _regressor(seed).fit(x[~out], y[~out])
            errs.append((int(np.argmax(out)), float(m.predict(x[out][:1])[0] - y[out].mean())))
    rmse = float(np.sqrt(np.mean([e * e for _, e in errs]))) if errs else None
    worst = max(errs, key=lambda ie: abs(ie[1])) if errs else None
    return BoostedModel(sources, models, len(y), len(uniq), rmse, len(errs), worst)
