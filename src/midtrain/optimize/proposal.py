"""`optimize`: finished studies (and rounds) → fitted responses → the next mix as a round file.

The round it drafts follows `midtrain integrate propose`: the anchor is the first study's base
mix at the proposed anchor share (at least the minimum anchor share unless `no_anchor`), `sources`
every other measured source (zero shares kept, so that budgets can name them), `previous` the
current mix (the last round's, or the base mix), `targets` the tasks any measured candidate
targets, and the study fields copied from the first study. It validates with
`integrate.config.round_study`. The guards are the first study's plus the automatic ones of
`integrate.guards` (base domains, untargeted tasks) that were measured well enough to fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.errors import MidtrainError
from midtrain.integrate.guards import anchor_floor, auto_guards, candidate_targets
from midtrain.optimize import boost, fit
from midtrain.optimize.points import PRIMARY, Points, current_mix, load_points
from midtrain.optimize.solve import Guard, Problem, Solution, solve
from midtrain.study.tables import GuardTable, RoundTable, StudyTable

MARGIN = 0.1  # the trust region: measured weights ± this share
Z_UCB = 1.645  # one-sided 95%: the guards' upper bound with ucb=True


class GuardSpec(GuardTable, total=False):
    """A guard of the proposal: the first study's, or an automatic one (`auto`)."""

    auto: bool


@dataclass
class Predicted:
    """A metric at the current and the proposed mix (the delta's se is parameter uncertainty)."""

    metric: str
    current: float
    proposed: float
    delta: float
    se: float
    higher_better: bool
    tolerance: float | None = None
    cv_rmse: float | None = None  # leave one mix out
    cv_mixes: int = 0
    cv_worst: str | None = None  # "ORIGIN (error)"
    measured: float | None = None  # the mean of the points measured at the current mix
    auto: bool = False  # an automatic guard (integrate.guards), not one of the study's


@dataclass
class Proposal:
    sources: list[str]
    current: np.ndarray
    current_name: str
    proposed: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    caps: dict[str, float]  # repetition caps (epochs)
    cap_share: dict[str, float]  # the most share each source may take under its cap
    model: str
    law: str  # the fitted primary response, in words
    points: int
    mixes: int
    primary: Predicted
    guards: list[Predicted]
    outside: list[str]  # where the optimum without the trust region lies
    targets: list[str] = field(default_factory=list)  # tasks left unguarded (aimed at)
    notes: list[str] = field(default_factory=list)
    round: RoundTable = field(default_factory=dict)  # type: ignore[assignment]


def optimize(studies: list[Path], *, out: Path, history: Path | None = None,
             budgets: dict[str, float] | None = None, kl: float = 0.1, tokens: int | None = None,
             tokens_scale: float | None = None, no_anchor: bool = False,
             model: str = "loglinear", margin: float = MARGIN, ucb: bool = False,
             seed: int = 0) -> Proposal:  # fmt: skip
    """Fit, solve and draft the round (not written: see `integrate.propose.write_round`)."""
    from midtrain.integrate.propose import check_tokens, round_tokens

    if kl < 0:
        raise MidtrainError(f"--kl {kl}: must be >= 0")
    check_tokens(tokens, tokens_scale)
    if model not in ("loglinear", "gbm"):
        raise MidtrainError(f"--model {model}: use loglinear or gbm")
    pts = load_points(studies, history)
    cur, cur_name = current_mix(pts)
    cfg0 = pts.studies[0][1]
    anchor = {s: float(r) for s, r in cfg0["base"].items() if r > 0}
    sources = sorted(set(pts.sources) | set(cur) | set(anchor))
    budgets = _check_budgets(budgets or {}, sources)
    tokens = round_tokens(int(cfg0["tokens"]), tokens, tokens_scale)
    caps, upper, cap_text = _caps(pts, sources, tokens)
    current = np.array([cur.get(s, 0.0) for s in sources])
    primary = _model(pts, PRIMARY, sources, anchor, model, seed)
    x, y, _ = pts.matrix(PRIMARY, sources)
    lo, hi = np.clip(x.min(axis=0) - margin, 0, 1), np.clip(x.max(axis=0) + margin, 0, 1)
    tasks = pts.studies[0][2].eval.tasks
    targets = [t for t in candidate_targets(cfg for _, cfg, _ in pts.studies) if t in tasks]
    specs, notes = guard_specs(pts, cfg0, anchor, targets)
    guards, gmodels = _guards(pts, specs, sources, anchor, model, seed, current, ucb, notes)
    spread = float(y.max() - y.min()) or 1.0
    prob = Problem(sources=sources, anchor=anchor, current=current,
                   primary=lambda r: float(primary.predict(r)[0]), spread=spread, kl=kl,
                   budgets=budgets, upper=upper, cap_text=cap_text, guards=guards, lo=lo, hi=hi,
                   smooth=getattr(primary, "smooth", True),
                   min_anchor=anchor_floor(no_anchor))  # fmt: skip
    sol = solve(prob, seed=seed)

    def pred(metric: str, m: Any, hb: bool, tol: float | None = None) -> Predicted:
        return _predicted(pts, metric, m, sol.r, current, hb, tol)

    prop = Proposal(
        sources=sources, current=current, current_name=cur_name, proposed=sol.r, lo=lo, hi=hi,
        caps=caps, cap_share=upper, model=primary.kind, law=primary.describe(), points=primary.n,
        mixes=primary.mixes, primary=pred(PRIMARY, primary, True),
        guards=[replace(pred(g.name, m, hb, g.tolerance), auto=auto)
                for g, (m, hb, auto) in zip(guards, gmodels, strict=True)],
        outside=sol.outside, notes=pts.notes + primary.notes + notes, targets=targets,
    )  # fmt: skip
    own = {"targets": targets} | ({"no_anchor": True} if no_anchor else {})
    prop.round = _round(prop, sol, prob, pts, history, budgets, tokens, out, studies, own)
    return prop


def _check_budgets(budgets: dict[str, float], sources: list[str]) -> dict[str, float]:
    for group, b in budgets.items():
        for n in (x.strip() for x in group.split("+")):
            if n not in sources:
                raise MidtrainError(f"--budget {group}={b:g}: {n!r} is not a measured source "
                                    f"({', '.join(sources)}); name sources of the studies")  # fmt: skip
        if not 0.0 < b <= 1.0:
            raise MidtrainError(f"--budget {group}={b:g}: a budget is a share in (0, 1]")
    return budgets


def _caps(pts: Points, sources: list[str], tokens: int) -> tuple[dict, dict, dict]:
    """Per source: its repetition cap (epochs, the largest any study allows), the share of the
    mix it allows at `tokens` per run, and the cap in words."""
    from midtrain.integrate.propose import store_tokens

    caps: dict[str, float] = {}
    stored: dict[str, int] = {}
    for _, cfg, _ in pts.studies:
        own = {s: cfg.get("base_max_repetition", 1.0) for s in cfg["base"]}
        for c in cfg["candidates"]:
            own |= {s: max(own.get(s, 1.0), c.get("max_repetition", 1.0)) for s in c["mix"]}
        own |= cfg.get("source_max_repetition") or {}
        caps |= {s: max(caps.get(s, 1.0), v) for s, v in own.items()}
        if not stored:
            stored = store_tokens(cfg)
    missing = [s for s in sources if s not in stored]
    if missing:
        raise MidtrainError(f"stores.{missing[0]}: not a store of the first study; list every "
                            "measured source's store in it")  # fmt: skip
    caps = {s: caps.get(s, 1.0) for s in sources}
    upper = {s: caps[s] * stored[s] / tokens for s in sources}
    text = {s: f"{s} = {caps[s]:g} ({min(upper[s], 1.0):.3g} of the mix at most)" for s in sources}
    return caps, upper, text


def _model(pts: Points, metric: str, sources: list[str], anchor: dict[str, float], kind: str,
           seed: int) -> Any:  # fmt: skip
    if metric not in pts.metrics:
        raise MidtrainError(f"optimize: no finished run has a {metric} score; the studies need "
                            "tasks (eval.tasks) and finished runs")  # fmt: skip
    x, y, se = pts.matrix(metric, sources)
    if kind == "gbm":
        return boost.fit_boosted(x, y, sources, seed, metric)
    ref = sources.index(max(anchor, key=lambda s: anchor[s]))
    law = fit.fit_law(x, y, sources, ref=ref, se=se, seed=seed)
    return _per_task(pts, law, x, sources, ref, seed) if metric == PRIMARY else law


def _per_task(pts: Points, law: fit.LogLinearLaw, x: np.ndarray, sources: list[str], ref: int,
              seed: int) -> Any:  # fmt: skip
    """The primary as the mean of its tasks' laws, when every task was measured on the same runs
    and that predicts left-out mixes better (leave-one-mix-out) than one law on the primary."""
    res = pts.studies[0][2]
    tasks = res.method.primary_tasks if res.method else res.eval.tasks
    laws = []
    for t in tasks:
        if f"task:{t}" not in pts.metrics:
            return law
        xt, yt, se = pts.matrix(f"task:{t}", sources)
        if xt.shape != x.shape or not np.allclose(xt, x) or not np.isnan(se).all():
            return law
        laws.append(fit.fit_law(xt, yt, sources, ref=ref, se=se, seed=seed))
    if len(laws) < 2:
        return law
    mean = fit.MeanOfLaws(laws, list(tasks))
    if mean.loo_rmse is None or (law.loo_rmse is not None and law.loo_rmse <= mean.loo_rmse):
        law.notes.append(f"one law on the primary score (leave-one-mix-out rmse "
                         f"{_g(law.loo_rmse)}) over the mean of its {len(laws)} task laws "
                         f"({_g(mean.loo_rmse)})")  # fmt: skip
        return law
    mean.notes.append(f"the primary as the mean of its {len(laws)} task laws (leave-one-mix-out "
                      f"rmse {_g(mean.loo_rmse)}) over one law on the primary score "
                      f"({_g(law.loo_rmse)})")  # fmt: skip
    return mean


def _g(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def guard_specs(pts: Points, cfg0: StudyTable, anchor: dict[str, float],
                targets: list[str]) -> tuple[list[GuardSpec], list[str]]:  # fmt: skip
    """The first study's guards, then the automatic ones (base domains, tasks no candidate
    targets) on metrics some run measured (each flagged `auto`); notes on those left out."""
    given = list(cfg0.get("guards") or [])
    auto = auto_guards(anchor, pts.studies[0][2].eval.tasks, targets, given)  # tasks: 1st study
    kept = [g | {"auto": True} for g in auto if _metric(g)[0] in pts.metrics]
    notes = [f"no automatic guard on {_metric(g)[0]}: no run measured it" for g in auto
             if _metric(g)[0] not in pts.metrics]  # fmt: skip
    return given + kept, notes


def _metric(g: GuardTable) -> tuple[str, bool]:
    """A guard's metric and whether higher is better."""
    return (f"domain:{g['domain']}", False) if g.get("domain") else (f"task:{g['task']}", True)


def _guards(pts: Points, specs: list[GuardSpec], sources: list[str],
            anchor: dict[str, float], kind: str, seed: int, current: np.ndarray, ucb: bool,
            notes: list[str]) -> tuple[list[Guard], list]:  # fmt: skip
    """Each guard as a constraint on its fitted response (an automatic guard whose metric cannot
    be fitted is left out, with a note)."""
    guards, models = [], []
    for g in specs:
        metric, hb = _metric(g)
        try:
            m = _model(pts, metric, sources, anchor, kind, seed)
        except MidtrainError as e:
            if not g.get("auto"):
                raise
            notes.append(f"no automatic guard on {metric}: {str(e).removeprefix('optimize: ')}")
            continue
        sign = -1.0 if hb else 1.0

        def worse(r: np.ndarray, m: Any = m, sign: float = sign) -> float:
            if not ucb:  # the mean alone (cheap: no se)
                return sign * float(m.predict(r)[0] - m.predict(current)[0])
            d, se = m.delta(r, current)
            return sign * d + Z_UCB * se

        guards.append(Guard(metric, float(g.get("tolerance", 0.0)), worse))
        models.append((m, hb, bool(g.get("auto"))))
    return guards, models


def _predicted(pts: Points, metric: str, m: Any, r: np.ndarray, current: np.ndarray, hb: bool,
               tolerance: float | None = None) -> Predicted:  # fmt: skip
    d, se = m.delta(r, current)
    out = Predicted(metric, float(m.predict(current)[0]), float(m.predict(r)[0]), d, se, hb,
                    tolerance, m.loo_rmse, m.loo_n)  # fmt: skip
    x, y, _ = pts.matrix(metric, m.sources)
    at = np.all(np.abs(x - current) < 1e-6, axis=1)
    out.measured = float(y[at].mean()) if at.any() else None
    if m.loo_worst is not None:
        i, err = m.loo_worst
        out.cv_worst = f"{pts.metrics[metric][i].origin.rsplit('/s', 1)[0]} ({err:+.3g})"
    return out


def _round(prop: Proposal, sol: Solution, prob: Problem, pts: Points, history: Path | None,
           budgets: dict[str, float], tokens: int, out: Path, studies: list[Path],
           own: RoundTable) -> RoundTable:  # fmt: skip
    """The proposal as a round (study fields from the first study, paths relative to `out`)."""
    from midtrain.integrate.propose import _last_round, finish_round

    # shares rounded down (a cap that binds still holds); the anchor takes the remainder
    shares = {
        u: float(np.floor(v * 1e4) / 1e4) for u, v in zip(prob.units[1:], sol.z[1:], strict=True)
    }
    anchor_share = round(1.0 - sum(shares.values()), 6)
    cur = {s: float(v) for s, v in zip(prop.sources, prop.current, strict=True) if v > 0}
    last = _last_round(history)
    idx = (last.round + 1) if last else 1
    used = set(prob.anchor) | {s for s, v in shares.items() if v > 0}
    rnd = {
        "name": f"round-{idx}", "round": idx, "anchor": prob.anchor, "anchor_share": anchor_share,
        **own, "sources": shares, "previous": cur, "previous_name": prop.current_name, "ablate": [],
        "budgets": budgets, "max_repetition": {s: prop.caps[s] for s in sorted(used | set(shares))},
        "merge_seeds": False,
    }  # fmt: skip
    mix = {s: anchor_share * r for s, r in prob.anchor.items()} | {s: v for s, v in shares.items()}
    if all(abs(mix.get(s, 0.0) - cur.get(s, 0.0)) < 5e-4 for s in set(mix) | set(cur)):
        raise MidtrainError(f"optimize: the proposal is the current mix ({prop.current_name}): "
                            "nothing is predicted to gain enough; lower --kl or measure more "
                            "mixes; no round written")  # fmt: skip
    return finish_round(rnd, pts.studies[0][1], list(studies), tokens=tokens, out=out,
                        history=history, last=last)  # fmt: skip
