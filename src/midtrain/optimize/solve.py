"""Propose the next mix: maximise the predicted primary score minus a KL penalty, under constraints.

The variables are the round's shares z: the anchor (the base mix, its own ratios fixed) and each
other source; the mix is r = M z. Maximise

    (P(r) − P(current)) / spread − λ · KL(r ‖ current)

where P is the fitted primary law, `spread` the range of the measured primary scores (so λ is in
"measured spreads per nat" whatever the metric's units), and sources absent from the current mix
count in it as ε/S (ε = 0.01) so that adding one costs a finite divergence. Subject to:

- the simplex: z ≥ 0, Σ z = 1;
- the anchor floor: z_anchor ≥ `min_anchor` (the minimum anchor share, 0 with --no-anchor);
- group budgets: Σ_{s ∈ G} r_s ≤ b_G;
- repetition caps: r_s · tokens ≤ cap_s · store_tokens_s, i.e. r_s ≤ u_s;
- guards: a guarded domain's predicted bpb at r not above the current mix's by more than its
  tolerance (a guarded task: not below), on the mean or (`ucb`) the upper confidence bound;
- the trust region: each r_s within the range of its measured weights ± `margin`; a source never
  measured stays at 0. The problem is also solved without it: when that optimum lies outside, the
  proposal says so (the law is not trusted that far).

Solved with `scipy.optimize.minimize` (SLSQP) from seeded starts; the best feasible one wins. The
linear part (simplex, budgets, caps) is checked first with a linear program, and when it cannot
hold, one line names the binding budgets and caps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linprog, minimize

from midtrain.errors import MidtrainError

EPS = 0.01  # the current mix's smoothing: absent sources count as EPS / S
TOL = 1e-6
SEARCH = 4000  # random mixes tried for a model without gradients
Predict = Callable[[np.ndarray], float]


@dataclass
class Guard:
    """A guarded metric: `worse(r)`, its predicted change from the current mix in its bad
    direction (plus z·se with the upper bound), may not exceed `tolerance`."""

    name: str
    tolerance: float
    worse: Predict


@dataclass
class Problem:
    sources: list[str]
    anchor: dict[str, float]  # the base mix: one variable, its ratios fixed
    current: np.ndarray  # the current mix over `sources`
    primary: Predict
    spread: float = 1.0
    kl: float = 0.1
    budgets: dict[str, float] = field(default_factory=dict)
    upper: dict[str, float] = field(default_factory=dict)  # cap shares u_s
    cap_text: dict[str, str] = field(default_factory=dict)  # "web = 1 (0.3 of the mix at most)"
    guards: list[Guard] = field(default_factory=list)
    min_anchor: float = 0.0  # the least share of the anchor variable
    lo: np.ndarray | None = None  # trust region over `sources`
    hi: np.ndarray | None = None
    smooth: bool = True  # False (trees): seeded random search instead of SLSQP

    @property
    def units(self) -> list[str]:
        """The variables: "anchor" and each source outside the anchor."""
        return ["anchor"] + [s for s in self.sources if s not in self.anchor]

    def matrix(self) -> np.ndarray:
        """M [sources, units]: r = M z."""
        m = np.zeros((len(self.sources), len(self.units)))
        for i, s in enumerate(self.sources):
            if s in self.anchor:
                m[i, 0] = self.anchor[s]
            else:
                m[i, self.units.index(s)] = 1.0
        return m


@dataclass
class Solution:
    z: np.ndarray
    r: np.ndarray
    objective: float
    free_r: np.ndarray | None = None  # the optimum without the trust region
    outside: list[str] = field(default_factory=list)  # where free_r leaves the trust region


def kl_div(r: np.ndarray, q: np.ndarray) -> float:
    """KL(r ‖ q) with q smoothed: (1 − EPS) q + EPS / S."""
    q = (1 - EPS) * q + EPS / len(q)
    r = np.clip(r, 0.0, None)
    nz = r > 1e-12
    return float(np.sum(r[nz] * np.log(r[nz] / q[nz])))


def _linear(prob: Problem, trust: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A_ub, b_ub (A z ≤ b) of budgets, caps and (trust) the trust region, with each row's name."""
    m, rows, rhs, names = prob.matrix(), [], [], []
    col = {s: i for i, s in enumerate(prob.sources)}
    for group, b in prob.budgets.items():
        idx = [col[n.strip()] for n in group.split("+") if n.strip() in col]
        rows.append(m[idx].sum(axis=0))
        rhs.append(b)
        names.append(f"budget:{group}")
    for s, u in prob.upper.items():
        if s in col:
            rows.append(m[col[s]])
            rhs.append(u)
            names.append(f"cap:{s}")
    if trust and prob.lo is not None and prob.hi is not None:
        for i in range(len(prob.sources)):
            rows += [m[i], -m[i]]
            rhs += [prob.hi[i], -prob.lo[i]]
            names += [f"trust:{prob.sources[i]}", f"trust:{prob.sources[i]}"]
    a = np.array(rows).reshape(len(rows), len(prob.units))
    return a, np.array(rhs, dtype=float), names


def check_feasible(prob: Problem) -> np.ndarray:
    """A z meeting the simplex, budgets, caps and the anchor floor; else one line naming what
    binds."""
    a, b, names = _linear(prob, trust=False)
    n = len(prob.units)
    res = linprog(-np.ones(n), A_ub=a if len(b) else None, b_ub=b if len(b) else None,
                  bounds=[(0, 1)] * n, method="highs")  # fmt: skip
    if res.status == 0 and res.x.sum() >= 1 - TOL:
        return _anchor_floor(prob, a, b, names, res.x / res.x.sum())
    raise MidtrainError(_binding(prob, a, b, names, res.x, "cannot hold with shares summing to 1"))


def _anchor_floor(prob: Problem, a: np.ndarray, b: np.ndarray, names: list[str],
                  z: np.ndarray) -> np.ndarray:  # fmt: skip
    """The largest anchor share the simplex, budgets and caps allow, when `z` is below the floor;
    one line naming what binds when even that is below it."""
    if z[0] >= prob.min_anchor - TOL:
        return z
    n = len(prob.units)
    res = linprog(-np.eye(n)[0], A_ub=a if len(b) else None, b_ub=b if len(b) else None,
                  A_eq=np.ones((1, n)), b_eq=[1.0], bounds=[(0, 1)] * n, method="highs")  # fmt: skip
    if res.status == 0 and res.x[0] >= prob.min_anchor - TOL:
        return res.x
    what = (f"allow an anchor share of at most {res.x[0]:.3g}, below the minimum anchor share "
            f"{prob.min_anchor:g}")  # fmt: skip
    raise MidtrainError(_binding(prob, a, b, names, res.x, what,
                                 fix="raise a cap or a budget, or pass --no-anchor"))  # fmt: skip


def _binding(prob: Problem, a: np.ndarray, b: np.ndarray, names: list[str], x: np.ndarray,
             what: str, fix: str = "raise a cap or a budget") -> str:  # fmt: skip
    """`optimize: budgets ... and max_repetition ... WHAT; FIX`: the constraints tight at `x`."""
    slack = b - a @ x
    tight = [nm for nm, sl in zip(names, slack, strict=True) if sl < 1e-7]
    groups = [nm.split(":", 1)[1] for nm in tight if nm.startswith("budget:")]
    covered = {x.strip() for g in groups for x in g.split("+")}
    caps = [nm.split(":", 1)[1] for nm in tight if nm.startswith("cap:")]
    caps = [s for s in caps if s not in covered] or ([] if groups else caps)
    parts = []
    if groups:
        parts.append("budgets " + ", ".join(f"{g} <= {prob.budgets[g]:g}" for g in groups))
    if caps:
        parts.append("max_repetition " + ", ".join(prob.cap_text.get(s, s) for s in caps))
    return f"optimize: {' and '.join(parts) or 'the constraints'} {what}; {fix}"


def solve(prob: Problem, seed: int = 0, starts: int = 8) -> Solution:
    """The proposal within the trust region, and where the free optimum would have gone."""
    z0 = check_feasible(prob)
    sol = _solve(prob, True, z0, seed, starts)
    if sol is None:
        raise MidtrainError("optimize: no mix within the measured weights (± the trust margin) "
                            "meets the budgets, caps and guards; run arms nearer to them first")  # fmt: skip
    free = _solve(prob, False, z0, seed, starts)
    if free is not None and prob.lo is not None and prob.hi is not None:
        sol.free_r = free.r
        for i, s in enumerate(prob.sources):
            if free.r[i] > prob.hi[i] + 1e-3:
                sol.outside.append(f"{s} {free.r[i]:.3f} > {prob.hi[i]:.3f}")
            elif free.r[i] < prob.lo[i] - 1e-3:
                sol.outside.append(f"{s} {free.r[i]:.3f} < {prob.lo[i]:.3f}")
    return sol


def _solve(prob: Problem, trust: bool, z0: np.ndarray, seed: int,
           starts: int) -> Solution | None:  # fmt: skip
    m = prob.matrix()
    a, b, _ = _linear(prob, trust)
    p0 = prob.primary(prob.current)

    def objective(z: np.ndarray) -> float:
        r = m @ z
        return -(prob.primary(r) - p0) / prob.spread + prob.kl * kl_div(r, prob.current)

    cons = [{"type": "eq", "fun": lambda z: np.sum(z) - 1.0},
            {"type": "ineq", "fun": lambda z: z[0] - prob.min_anchor}]  # fmt: skip
    if len(b):
        cons.append({"type": "ineq", "fun": lambda z: b - a @ z})
    for g in prob.guards:
        cons.append({"type": "ineq", "fun": lambda z, g=g: g.tolerance - g.worse(m @ z)})
    rng = np.random.default_rng(seed)
    if not prob.smooth:
        return _search(prob, objective, cons, [z0, _current_z(prob)], rng)
    inits = [z0, _current_z(prob)] + [rng.dirichlet(np.ones(len(z0))) for _ in range(starts)]
    best = None
    for z in inits:
        res = minimize(objective, z, method="SLSQP", bounds=[(0, 1)] * len(z0),
                       constraints=cons, options={"maxiter": 300, "ftol": 1e-10})  # fmt: skip
        zz = np.clip(res.x, 0, 1)
        ok = abs(zz.sum() - 1) < 1e-5 and all(np.all(c["fun"](zz) >= -1e-5) for c in cons[1:])
        if ok and (best is None or res.fun < best.objective):
            best = Solution(zz / zz.sum(), m @ (zz / zz.sum()), float(res.fun))
    return best


def _search(prob: Problem, objective: Callable, cons: list[dict], seeds: list[np.ndarray],
            rng: np.random.Generator, n: int = SEARCH) -> Solution | None:  # fmt: skip
    """The best of `n` seeded random mixes (and the seeds) that meet every constraint."""
    m, best = prob.matrix(), None
    for z in seeds + [rng.dirichlet(np.full(len(seeds[0]), 0.5)) for _ in range(n)]:
        if all(np.all(c["fun"](z) >= -1e-9) for c in cons[1:]):
            f = objective(z)
            if best is None or f < best.objective:
                best = Solution(z, m @ z, float(f))
    return best


def _current_z(prob: Problem) -> np.ndarray:
    """The current mix as shares (anchor at its largest share inside it; renormalised)."""
    cur = dict(zip(prob.sources, prob.current, strict=True))
    a = min(cur.get(s, 0.0) / r for s, r in prob.anchor.items() if r > 0)
    z = np.array([a] + [cur.get(u, 0.0) for u in prob.units[1:]])
    return z / z.sum() if z.sum() > 0 else np.full(len(z), 1 / len(z))
