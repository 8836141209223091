"""Fit how a metric responds to the mixture weights: a log-linear mixing law, or gradient boosting.

**The law** (Ye et al. 2024, "Data mixing laws"): y = c + k·exp(Σ_j t_j r_j) over the mix's
ratios r. On the simplex one t is redundant (adding a constant to every t_j only rescales k), so
the first source (`ref`, the base mix's largest) has t = 0: a law over S sources has S + 1
parameters (c, k and S − 1 slopes). The same form serves losses (lower is better) and scores
(higher is better): k's sign and the slopes carry the direction.

Fitted by `scipy.optimize.least_squares` from seeded starts (for each random slope vector, c and k
by linear least squares, then all parameters jointly); the lowest cost wins. Points are weighted
by their noise: per-run points by the pooled sd of runs at the same mix (pure error), derived
points (an arm's mean) by their se; unweighted when no noise is known.

**Uncertainty** is the Jacobian's (the delta method): Cov(θ) = s²(JᵀJ)⁺ at the fit, s² the
residual variance of the weighted fit; the se of a prediction (or of the difference between two
mixes) is √(gᵀ Cov g) for g the gradient of the prediction in θ. **Cross-validation** leaves one
*mix* out at a time (all its runs), refits, and reports the RMSE of predicting that mix's mean:
leaving out one seed of a replicated mix would flatter the law.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares

from midtrain.errors import MidtrainError

STARTS = 6
T_BOUND = 30.0


@dataclass
class LogLinearLaw:
    """y = c + k·exp(x @ t), t[ref] = 0; `cov` over θ = (c, k, t without ref)."""

    sources: list[str]
    ref: int
    theta: np.ndarray
    cov: np.ndarray
    s: float  # residual sd, in the units of y (unweighted) or of the weights
    n: int
    mixes: int
    loo_rmse: float | None = None
    loo_n: int = 0
    loo_worst: tuple[int, float] | None = None  # (a point of the worst-predicted mix, its error)
    loo_errors: list[tuple[int, float]] = field(default_factory=list)
    kind: str = "loglinear"
    notes: list[str] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return len(self.theta)

    def _t(self, theta: np.ndarray) -> np.ndarray:
        return np.insert(theta[2:], self.ref, 0.0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return _f(self.theta, np.atleast_2d(x), self.ref)

    def grad(self, x: np.ndarray) -> np.ndarray:
        """∂prediction/∂θ at each row of x: [rows, params]."""
        return _jac(self.theta, np.atleast_2d(x), self.ref)

    def se(self, x: np.ndarray) -> np.ndarray:
        g = self.grad(x)
        return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", g, self.cov, g), 0.0))

    def delta(self, x: np.ndarray, x0: np.ndarray) -> tuple[float, float]:
        """Prediction at x minus at x0, with its se (parameter uncertainty, correlated)."""
        d = float(self.predict(x)[0] - self.predict(x0)[0])
        g = self.grad(x)[0] - self.grad(x0)[0]
        return d, float(np.sqrt(max(g @ self.cov @ g, 0.0)))

    def describe(self) -> str:
        t = self._t(self.theta)
        slopes = ", ".join(f"{s} {v:+.3g}" for s, v in zip(self.sources, t, strict=True))
        return f"c {self.theta[0]:.4g}, k {self.theta[1]:+.4g}, t: {slopes}"


def _f(theta: np.ndarray, x: np.ndarray, ref: int) -> np.ndarray:
    t = np.insert(theta[2:], ref, 0.0)
    return theta[0] + theta[1] * np.exp(np.clip(x @ t, -50, 50))


def _jac(theta: np.ndarray, x: np.ndarray, ref: int) -> np.ndarray:
    t = np.insert(theta[2:], ref, 0.0)
    e = np.exp(np.clip(x @ t, -50, 50))
    dt = theta[1] * e[:, None] * np.delete(x, ref, axis=1)
    return np.column_stack([np.ones(len(x)), e, dt])


def n_params(n_sources: int) -> int:
    return n_sources + 1


def check_enough(n_points: int, n_mixes: int, n_sources: int) -> None:
    """A law needs more points than parameters and as many distinct mixes as parameters."""
    p = n_params(n_sources)
    if n_points < p + 1:
        raise MidtrainError(f"optimize: {n_points} points for a law with {p} parameters; run "
                            "more arms (fractions or candidates) first")  # fmt: skip
    if n_mixes < p:
        raise MidtrainError(f"optimize: {n_points} points at {n_mixes} distinct mixes for a law "
                            f"with {p} parameters; run more arms (fractions or candidates) first")  # fmt: skip


def fit_law(x: np.ndarray, y: np.ndarray, sources: list[str], ref: int = 0,
            se: np.ndarray | None = None, seed: int = 0, cv: bool = True) -> LogLinearLaw:  # fmt: skip
    """Fit the law to points x [n, S] (rows on the simplex), y [n]; `se` nan for per-run points."""
    n, p = len(y), n_params(x.shape[1])
    mixes = _groups(x)
    check_enough(n, len(mixes), x.shape[1])
    w = _weights(x, y, se, mixes)
    theta = _best_fit(x, y, w, ref, seed)
    res = (_f(theta, x, ref) - y) * w
    jw = _jac(theta, x, ref) * w[:, None]
    s2 = float(res @ res / (n - p))
    cov = s2 * np.linalg.pinv(jw.T @ jw)
    law = LogLinearLaw(sources, ref, theta, cov, float(np.sqrt(s2)), n, len(mixes))
    if np.linalg.matrix_rank(jw.T @ jw, tol=1e-9 * max(1.0, np.abs(jw).max() ** 2)) < p:
        law.notes.append("the points do not pin every parameter down (rank-deficient Jacobian); "
                         "the uncertainty along those directions is left out")  # fmt: skip
    at_bound = [s for s, v in zip(sources, law._t(theta), strict=True) if abs(v) >= T_BOUND - 1e-6]
    if at_bound:
        law.notes.append(f"the slope of {', '.join(at_bound)} is at its bound (±{T_BOUND:g}): the "
                         "law jumps between measured shares there; its se is not reliable")  # fmt: skip
    if cv:
        law.loo_errors = _loo(x, y, w, ref, seed, mixes, theta)
        _summarise_loo(law, law.loo_errors)
    return law


def _summarise_loo(model: LogLinearLaw | MeanOfLaws, errs: list[tuple[int, float]]) -> None:
    if errs:
        model.loo_rmse = float(np.sqrt(np.mean([e * e for _, e in errs])))
        model.loo_n, model.loo_worst = len(errs), max(errs, key=lambda ie: abs(ie[1]))


@dataclass
class MeanOfLaws:
    """The primary score as what it is, the mean over its tasks, each task with its own law
    (fitted on the same runs). The se treats the task fits as independent (an approximation:
    they share the runs); cross-validation averages the tasks' errors at each left-out mix."""

    laws: list[LogLinearLaw]
    tasks: list[str]
    kind: str = "loglinear, mean of task laws"
    loo_rmse: float | None = None
    loo_n: int = 0
    loo_worst: tuple[int, float] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        errs = [dict(law.loo_errors) for law in self.laws]
        common = set.intersection(*(set(e) for e in errs)) if errs else set()
        _summarise_loo(self, [(i, float(np.mean([e[i] for e in errs]))) for i in sorted(common)])
        self.notes = [f"{t}: {n}" for t, law in zip(self.tasks, self.laws, strict=True)
                      for n in law.notes]  # fmt: skip

    sources = property(lambda self: self.laws[0].sources)
    n = property(lambda self: self.laws[0].n)
    mixes = property(lambda self: self.laws[0].mixes)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.mean([law.predict(x) for law in self.laws], axis=0)

    def se(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(np.sum([law.se(x) ** 2 for law in self.laws], axis=0)) / len(self.laws)

    def delta(self, x: np.ndarray, x0: np.ndarray) -> tuple[float, float]:
        ds = [law.delta(x, x0) for law in self.laws]
        d = float(np.mean([d for d, _ in ds]))
        return d, float(np.sqrt(sum(se * se for _, se in ds)) / len(ds))

    def describe(self) -> str:
        return "; ".join(f"{t}: {law.describe()}" for t, law in zip(self.tasks, self.laws,
                                                                      strict=True))  # fmt: skip


def _groups(x: np.ndarray) -> list[np.ndarray]:
    """Indices of the points at each distinct mix."""
    keys = [tuple(np.round(row, 9)) for row in x]
    uniq: dict[tuple, list[int]] = {}
    for i, k in enumerate(keys):
        uniq.setdefault(k, []).append(i)
    return [np.array(v) for v in uniq.values()]


def _weights(x: np.ndarray, y: np.ndarray, se: np.ndarray | None,
             mixes: list[np.ndarray]) -> np.ndarray:  # fmt: skip
    """1/noise per point: derived points' se; per-run points' pooled within-mix sd."""
    se = np.full(len(y), np.nan) if se is None else np.array(se, dtype=float)
    run = np.isnan(se)
    ss = sum(float(((y[g] - y[g].mean()) ** 2).sum()) for g in mixes if run[g].all() and len(g) > 1)
    df = sum(len(g) - 1 for g in mixes if run[g].all() and len(g) > 1)
    if not (~run).any():
        return np.ones(len(y))
    sd_run = np.sqrt(ss / df) if df and ss > 0 else float(np.nanmedian(se))
    noise = np.where(run, sd_run, se)
    noise = np.maximum(noise, 1e-6 * max(1e-12, float(np.nanmax(noise))))
    return 1.0 / noise


def _best_fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, ref: int, seed: int,
              starts: int = STARTS, theta0: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
    rng = np.random.default_rng(seed)
    free = x.shape[1] - 1
    inits = [np.zeros(free) + 0.1] + [rng.normal(0.0, 2.0, free) for _ in range(starts - 1)]
    inits = inits[:starts]
    lo = np.r_[-np.inf, -np.inf, np.full(free, -T_BOUND)]
    hi = -lo
    best, cost = None, np.inf
    guesses = [theta0] if theta0 is not None else []
    for t in inits:
        e = np.exp(np.delete(x, ref, axis=1) @ t)
        a = np.column_stack([np.ones(len(y)), e]) * w[:, None]
        ck = np.linalg.lstsq(a, y * w, rcond=None)[0]
        guesses.append(np.r_[ck, t])
    for g in guesses:
        r = least_squares(lambda th: (_f(th, x, ref) - y) * w, np.clip(g, lo + 1e-9, hi - 1e-9),
                          jac=lambda th: _jac(th, x, ref) * w[:, None], bounds=(lo, hi),
                          x_scale="jac", max_nfev=200)  # fmt: skip
        if r.cost < cost:
            best, cost = r.x, r.cost
    return best


def _loo(x: np.ndarray, y: np.ndarray, w: np.ndarray, ref: int, seed: int,
         mixes: list[np.ndarray], theta: np.ndarray) -> list[tuple[int, float]]:  # fmt: skip
    """Leave one mix out: (a point of the mix, the error predicting its mean from a law fitted on
    the rest), for each mix whose removal leaves enough points."""
    p, errs = len(theta), []
    for g in mixes:
        keep = np.setdiff1d(np.arange(len(y)), g)
        if len(keep) < p + 1 or len(_groups(x[keep])) < p:
            continue
        th = _best_fit(x[keep], y[keep], w[keep], ref, seed, starts=0, theta0=theta)
        errs.append((int(g[0]), float(_f(th, x[g[:1]], ref)[0] - y[g].mean())))
    return errs
