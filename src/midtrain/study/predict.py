"""Predict an arm's primary delta at a planned anneal length from its trajectory.

Each form is linear in its coefficients once its shape is fixed, in t = tokens / the anneal's
tokens:

| form | delta(t) |
|---|---|
| `constant` | a (the delta has settled) |
| `log` | a + b log t (keeps growing, ever slower) |
| `power-c` | a + b t^-c, c in 0.5, 1, 2 (saturates, or decays, towards a) |

The form with the lowest leave-one-point-out error is chosen (ties: the simpler, listed first).
Its prediction at N is a fixed linear combination of the points' deltas, sum_k w_k delta_k, so it
is itself a contrast of the per-run, per-example combination sum_k w_k Y_k: `stats.contrast` gives
its interval with the runs' uncertainty exactly as for any delta (the run is the unit of
replication; the points of one run are not independent and need not be). The form's own
uncertainty enters as its leave-one-point-out RMSE (normal quantile); the two half-widths add in
quadrature.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as sps

from midtrain.study import stats
from midtrain.study.config import CONTROL
from midtrain.study.trajectory_results import Prediction

Basis = Callable[[np.ndarray], np.ndarray]  # t -> design matrix [len(t), params]

FORMS: dict[str, Basis] = {
    "constant": lambda t: np.ones((len(t), 1)),
    "log": lambda t: np.column_stack([np.ones(len(t)), np.log(t)]),
    "power-0.5": lambda t: np.column_stack([np.ones(len(t)), t**-0.5]),
    "power-1": lambda t: np.column_stack([np.ones(len(t)), t**-1.0]),
    "power-2": lambda t: np.column_stack([np.ones(len(t)), t**-2.0]),
}


def weights(form: str, t: Sequence[float], at: float) -> np.ndarray:
    """w with prediction(at) = w @ y for least squares of y on the form at points t."""
    x = FORMS[form](np.asarray(t, float))
    return FORMS[form](np.array([float(at)]))[0] @ np.linalg.pinv(x)


def loo_rmse(form: str, t: Sequence[float], y: Sequence[float]) -> float:
    """Root mean squared error of predicting each point from the others (nan when the form has
    more coefficients than the others can fit)."""
    t, y = np.asarray(t, float), np.asarray(y, float)
    if len(t) - 1 < FORMS[form](t[:1]).shape[1]:
        return math.nan
    errs = []
    for k in range(len(t)):
        keep = np.arange(len(t)) != k
        errs.append(weights(form, t[keep], t[k]) @ y[keep] - y[k])
    return float(np.sqrt(np.mean(np.square(errs))))


def choose(t: Sequence[float], y: Sequence[float]) -> tuple[str, dict[str, float]]:
    """The form with the lowest leave-one-point-out error, and every form's error."""
    errs = {f: loo_rmse(f, t, y) for f in FORMS}
    fitted = {f: e for f, e in errs.items() if math.isfinite(e)}
    if not fitted:
        return "constant", errs
    best = min(fitted.values())
    return next(f for f, e in fitted.items() if e <= best * (1 + 1e-9) + 1e-15), fitted


def predict(
    tokens: Sequence[int], qs_by_task: Sequence[Sequence[stats.Quantity]], arm: str,
    confidence: float, peers: Sequence[str] | None, task_weights: Sequence[float] | None,
    at_tokens: int,
) -> Prediction | None:  # fmt: skip
    """The primary delta at `at_tokens` from aligned per-point quantities of its tasks
    (`qs_by_task[task][point]`, the end last; `tokens` of each point)."""
    from midtrain.study.trajectory import combine

    end = tokens[-1]
    t = [x / end for x in tokens]
    deltas = [stats.contrast([q[k] for q in qs_by_task], arm, CONTROL, confidence, peers,
                             task_weights).delta for k in range(len(tokens))]  # fmt: skip
    if not all(math.isfinite(d) for d in deltas):
        return None
    form, errs = choose(t, deltas)
    w = weights(form, t, at_tokens / end)
    c = stats.contrast([combine(list(q), list(w)) for q in qs_by_task], arm, CONTROL,
                       confidence, peers, task_weights)  # fmt: skip
    run_h = (c.ci[1] - c.delta) if c.decidable else math.nan
    fit_h = float(sps.norm.ppf(0.5 + confidence / 2)) * errs.get(form, 0.0)
    h = math.sqrt(run_h**2 + fit_h**2) if math.isfinite(run_h) else math.nan
    lo, hi = (c.delta - h, c.delta + h) if math.isfinite(h) else (math.nan, math.nan)
    return Prediction(
        tokens=at_tokens, form=form, delta=float(c.delta), interval=[lo, hi],
        run_half_width=run_h if math.isfinite(run_h) else None, fit_half_width=fit_h,
        loo_rmse=errs, extrapolation=at_tokens / end,
    )  # fmt: skip
