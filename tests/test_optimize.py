"""The mix optimiser on synthetic points: the law's fit, the solver's constraints and optimum, the
KL pull, the one-line errors through the CLI, and the round file it writes (no training)."""

from __future__ import annotations

import numpy as np
import pytest
from test_study_e2e import study_file, world  # noqa: F401 - the fixture

from midtrain.cli import main
from midtrain.errors import MidtrainError
from midtrain.optimize.fit import _f, fit_law
from midtrain.optimize.solve import Problem, check_feasible, kl_div, solve

SOURCES = ["code", "flan", "math", "web"]
TRUE = np.array([-1.0, -2.0, -1.5, -0.7, -2.5])  # c, k, t of code, flan, math (web: t = 0)
WEB_BPB = np.array([0.35, 0.02, 1.0, 2.0, 1.2])  # lower is better; web's own loss rises
REF = SOURCES.index("web")


def _law(theta: np.ndarray, r: np.ndarray) -> np.ndarray:
    return _f(theta, np.atleast_2d(r), REF)


def _mixes() -> list[dict[str, float]]:
    """The base (web) and each candidate at 0.1, 0.3 and 0.5, and one pair."""
    out = [{"web": 1.0}]
    for c in ("code", "flan", "math"):
        out += [{"web": 1 - f, c: f} for f in (0.1, 0.3, 0.5)]
    return out + [{"web": 0.6, "math": 0.2, "code": 0.2}]


def _x(mixes: list[dict[str, float]]) -> np.ndarray:
    return np.array([[m.get(s, 0.0) for s in SOURCES] for m in mixes])


def test_fit_recovers_a_known_law_with_noise():
    rng = np.random.default_rng(0)
    x = np.repeat(_x(_mixes()), 3, axis=0)  # 3 seeds per mix
    y = _law(TRUE, x) + rng.normal(0, 0.01, len(x))
    law = fit_law(x, y, SOURCES, ref=REF)
    se = np.sqrt(np.diag(law.cov))
    assert np.all(np.abs(law.theta - TRUE) < 4 * se + 1e-3), (law.theta, se)
    assert law.s == pytest.approx(0.01, rel=0.4)  # the residual sd is the noise
    assert law.loo_rmse is not None and law.loo_rmse < 0.05 and law.loo_n == 11
    # the prediction's se at a measured mix is about the noise over sqrt(points near it)
    assert 0.001 < law.se(x[0])[0] < 0.02
    new = np.array([0.15, 0.1, 0.15, 0.6])
    d, dse = law.delta(new, x[0])
    truth = float(_law(TRUE, new)[0] - _law(TRUE, x[0])[0])
    assert abs(d - truth) < 4 * dse + 1e-3


def test_too_few_points_is_one_line():
    x = _x(_mixes()[:4])
    with pytest.raises(MidtrainError, match="^optimize: 4 points for a law with 5 parameters; run "
                       r"more arms \(fractions or candidates\) first$"):  # fmt: skip
        fit_law(x, _law(TRUE, x), SOURCES, ref=REF)
    x2 = np.repeat(x, 2, axis=0)
    with pytest.raises(MidtrainError, match="^optimize: 8 points at 4 distinct mixes for a law"):
        fit_law(x2, _law(TRUE, x2), SOURCES, ref=REF)


def _concave(target: np.ndarray) -> Problem:
    """Predicted primary −Σ(r − target)²: its optimum is `target` when that is feasible."""
    return Problem(sources=SOURCES, anchor={"web": 1.0}, current=np.array([0, 0, 0, 1.0]),
                   primary=lambda r: -float(np.sum((r - target) ** 2)), kl=0.0)  # fmt: skip


def test_solver_finds_the_known_optimum_and_respects_the_constraints():
    target = np.array([0.1, 0.2, 0.3, 0.4])
    sol = solve(_concave(target))
    assert sol.r == pytest.approx(target, abs=1e-4)
    prob = _concave(target)
    prob.budgets = {"math+code": 0.3}
    prob.upper = {"flan": 0.1, "web": 1.0}
    sol = solve(prob)
    assert sol.r.sum() == pytest.approx(1.0) and (sol.r >= -1e-9).all()
    assert sol.r[0] + sol.r[2] <= 0.3 + 1e-6 and sol.r[1] <= 0.1 + 1e-6
    # the constrained optimum of a separable quadratic: the budget's 0.1 deficit split equally
    # (code 0.05, math 0.25), flan at its cap, the rest to web
    assert sol.r == pytest.approx([0.05, 0.1, 0.25, 0.6], abs=1e-3)


def test_trust_region_stops_the_proposal_and_says_where_the_optimum_lies():
    prob = _concave(np.array([0.0, 0.0, 0.8, 0.2]))
    prob.lo, prob.hi = np.zeros(4), np.array([0.6, 0.6, 0.6, 1.0])
    sol = solve(prob)
    assert sol.r[2] == pytest.approx(0.6, abs=1e-4)
    assert sol.outside == ["math 0.800 > 0.600"]


def test_kl_penalty_pulls_toward_the_current_mix():
    current = np.array([0.1, 0.1, 0.1, 0.7])
    kls = []
    for lam in (0.0, 0.1, 1.0, 10.0):
        prob = _concave(np.array([0.4, 0.0, 0.4, 0.2]))
        prob.current, prob.kl = current, lam
        kls.append(kl_div(solve(prob).r, current))
    assert all(a > b for a, b in zip(kls, kls[1:], strict=False)), kls
    assert kls[-1] < 0.01


def test_infeasible_budgets_and_caps_name_the_binding_ones():
    prob = _concave(np.full(4, 0.25))
    prob.budgets = {"math+code+flan": 0.2}
    prob.upper = {"web": 0.3}
    prob.cap_text = {"web": "web = 1 (0.3 of the mix at most)"}
    with pytest.raises(MidtrainError) as e:
        check_feasible(prob)
    assert str(e.value) == (
        "optimize: budgets math+code+flan <= 0.2 and max_repetition web = 1 (0.3 of the mix at "
        "most) cannot hold with shares summing to 1; raise a cap or a budget"
    )


def test_anchor_floor_holds_and_names_what_binds():
    target = np.array([0.3, 0.3, 0.3, 0.1])  # the law wants web at 0.1
    assert solve(_concave(target)).r == pytest.approx(target, abs=1e-4)
    prob = _concave(target)
    prob.min_anchor = 0.3
    # a separable quadratic: web held at 0.3, the 0.2 it takes split equally over the others
    assert solve(prob).r == pytest.approx([0.3 - 0.2 / 3] * 3 + [0.3], abs=1e-3)
    prob.upper, prob.cap_text = {"web": 0.2}, {"web": "web = 1 (0.2 of the mix at most)"}
    with pytest.raises(MidtrainError) as e:
        check_feasible(prob)
    assert str(e.value) == (
        "optimize: max_repetition web = 1 (0.2 of the mix at most) allow an anchor share of at "
        "most 0.2, below the minimum anchor share 0.3; raise a cap or a budget, or pass --no-anchor"
    )


# ------------------------------------------------------------------------------------------------
# Through the CLI: synthetic finished studies (study.json + results.json, tiny stores, no eval.json)


def _run(name: str, arm: str, seed: int) -> dict:
    return {"name": f"{arm}/s{seed}", "arm": arm, "seed": seed, "run_id": f"{name}-{arm}-{seed}",
            "dir": f"runs/{arm}-{seed}", "status": "done"}  # fmt: skip


def _fake_study(root, stores: dict[str, int], seed: int = 0, guard: float | None = 0.05):  # noqa: ANN001, ANN202
    """A finished study whose runs score on the synthetic law (primary) and web bpb (derived)."""
    from midtrain.data.prepare import write_store
    from midtrain.io import atomic_write_json
    from midtrain.study.config import parse_study
    from midtrain.study.results import StudyResult

    for s, n in stores.items():
        write_store(root / "stores" / s, s, [np.ones(n, dtype=np.int64)], vocab_size=64,
                    eos_id=0, tokenizer_hash="t")  # fmt: skip
    (root / "ckpt").mkdir(parents=True, exist_ok=True)
    mixes = _mixes()[1:-1]
    cands = [{"name": f"{next(iter(set(m) - {'web'}))}", "mix": {next(iter(set(m) - {"web"})): 1.0},
              "fractions": [0.1, 0.3, 0.5], "max_repetition": 4.0} for m in mixes[::3]]  # fmt: skip
    cfg = parse_study({
        "name": "syn", "checkpoint": str(root / "ckpt"), "tokens": 4096,
        "stores": {s: str(root / "stores" / s) for s in stores}, "base": {"web": 1.0},
        "candidates": cands, "eval": {"tasks": ["t1"]},
        "guards": [{"domain": "web", "tolerance": guard}] if guard is not None else [],
    })  # fmt: skip
    study = root / "study"
    rng = np.random.default_rng(seed)

    def scores(m: dict) -> list[float]:
        return list(_law(TRUE, _x([m]))[0] + rng.normal(0, 0.01, 2))

    web0 = float(_law(WEB_BPB, _x([{"web": 1.0}]))[0])
    cost = {"runs": 2, "tokens": 8192, "flops": 1.0, "wall_s": 1.0, "share_of_full_run": None}
    arms = []
    for m in mixes:
        cand = next(iter(set(m) - {"web"}))
        arm = f"{cand}@{m[cand]:g}"
        bpb = float(_law(WEB_BPB, _x([m]))[0]) - web0 + rng.normal(0, 0.002)
        primary = {"delta": 0.0, "ci": [0, 0], "se": 0.01, "df": 2, "p": 0.5, "metric": "acc",
                   "tasks": ["t1"], "mde": None, "run_scores": scores(m)}  # fmt: skip
        arms.append({
            "verdict": "include", "reason": "", "primary": primary, "name": cand, "arm": arm,
            "domains": {"web": {"delta_bpb": bpb, "ci": [bpb, bpb], "se": 0.002, "n_docs": 9}},
            "mix": [{"source": s, "ratio": r} for s, r in m.items()], "candidate_mix": {cand: 1.0},
            "fraction": m[cand], "seeds": [0, 1], "runs": [_run("syn", arm, i) for i in (0, 1)],
            "checkpoints": [], "cost": cost,
        })  # fmt: skip
    res = StudyResult.model_validate({
        "study": "syn", "start": {}, "arms": arms, "confidence": 0.95, "study_flags": [],
        "control": {"seeds": [0, 1], "runs": [_run("syn", "control", i) for i in (0, 1)],
                    "noise_floor": {"metric": "acc", "control_scores": scores({"web": 1.0}),
                                    "primary_sd": 0.01, "tasks": {}},
                    "scores": {"t1": [0.0, 0.0]}, "domains": {"web": [web0, web0]}, "cost": cost},
        "eval": {"include_path": None, "tasks": ["t1"], "domains": ["web"],
                 "primary_metric": "acc", "limit": None, "num_fewshot": 0},
    })  # fmt: skip
    study.mkdir(parents=True)
    atomic_write_json(study / "study.json", {"config": cfg.model_dump(mode="json"), "runs": []})
    res.save(study / "results.json")
    return study


BIG = {"web": 100_000, "code": 100_000, "flan": 100_000, "math": 100_000}


def _cli(args: list[str], capsys) -> tuple[int, str, str]:  # noqa: ANN001
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    got = capsys.readouterr()
    return code, got.out, got.err


def test_cli_writes_a_round_that_validates(tmp_path, capsys):
    from midtrain.integrate.config import load_round

    study = _fake_study(tmp_path, BIG)
    out = tmp_path / "round.toml"
    code, text, err = _cli(["optimize", str(study), "--out", str(out), "--kl", "0.01"], capsys)
    assert code == 0, err
    spec, cfg = load_round(out)
    assert spec.anchor == {"web": 1.0} and spec.previous == {"web": 1.0}
    assert spec.name == "round-1" and spec.max_repetition == {"code": 4.0, "flan": 4.0,
                                                              "math": 4.0, "web": 1.0}  # fmt: skip
    assert cfg.reuse == [str(study)] and cfg.guards[0].domain == "web"
    mix = spec.mix()
    # the law rewards every candidate; the trust region keeps each within 0.5 + 0.1 measured
    assert mix["web"] < 0.9 and all(v <= 0.6 + 1e-6 for v in mix.values()), mix
    assert "extrapolation" in text and "predicted" in out.read_text()
    code, text, _ = _cli(["optimize", str(study), "--out", str(out), "--json"], capsys)
    import json

    got = json.loads(text)
    assert got["primary"]["delta"] > 0 and got["guards"][0]["metric"] == "domain:web"
    assert got["guards"][0]["delta"] <= 0.05 + 1e-6  # the guard holds on the prediction


def test_cli_adds_automatic_guards_and_a_study_guard_overrides_one(tmp_path, capsys):
    import json

    from midtrain.integrate.config import load_round
    from midtrain.integrate.guards import DOMAIN_TOLERANCE

    def guards(study, *extra: str) -> tuple[dict, list[str]]:  # noqa: ANN001
        out = tmp_path / "round.toml"
        code, text, err = _cli(["optimize", str(study), "--out", str(out), "--json", *extra],
                               capsys)  # fmt: skip
        assert code == 0, err
        got = json.loads(text)
        return {g["metric"]: (g["tolerance"], g["auto"]) for g in got["guards"]}, got["notes"]

    plain = _fake_study(tmp_path / "a", BIG, guard=None)
    got, notes = guards(plain)  # web: the base domain; t1 untargeted, but never measured per mix
    assert got == {"domain:web": (DOMAIN_TOLERANCE, True)}, got
    assert any(n.startswith("no automatic guard on task:t1: 2 points") for n in notes), notes
    got, _ = guards(_fake_study(tmp_path / "b", BIG, guard=0.05))  # the study's own web guard
    assert got == {"domain:web": (0.05, False)}, got
    meta = json.loads((plain / "study.json").read_text())
    meta["config"]["candidates"][0]["targets"] = ["t1"]
    (plain / "study.json").write_text(json.dumps(meta))
    _, notes = guards(plain, "--no-anchor", "--tokens-scale", "10")
    assert not any("task:t1" in n for n in notes), notes  # aimed at: no guard to fit
    spec, cfg = load_round(tmp_path / "round.toml")
    assert spec.targets == ["t1"] and spec.no_anchor and cfg.tokens == 10 * 4096


def test_optimize_keeps_the_minimum_anchor_share_unless_no_anchor(tmp_path):
    from midtrain.optimize.proposal import optimize

    study = _fake_study(tmp_path, BIG, guard=1.0)  # a web guard that never binds
    web = SOURCES.index("web")
    held = optimize([study], out=tmp_path / "r.toml", kl=0.0, margin=1.0)  # no trust region
    free = optimize([study], out=tmp_path / "r.toml", kl=0.0, margin=1.0, no_anchor=True)
    assert held.proposed[web] == pytest.approx(0.3, abs=1e-3) and held.round["anchor_share"] >= 0.3
    assert free.proposed[web] < 0.29 and free.round["no_anchor"] is True, free.proposed


def test_cli_budget_holds_and_guard_binds(tmp_path, capsys):
    from midtrain.integrate.config import load_round

    study = _fake_study(tmp_path, BIG)
    out = tmp_path / "round.toml"
    args = ["optimize", str(study), "--out", str(out), "--budget", "math+code=0.2", "--kl", "0"]
    assert _cli(args, capsys)[0] == 0
    spec, _ = load_round(out)
    mix = spec.mix()
    assert mix.get("math", 0) + mix.get("code", 0) <= 0.2 + 1e-6 and spec.budgets == {
        "math+code": 0.2}  # fmt: skip


@pytest.mark.parametrize(
    ("stores", "extra", "line"),
    [
        (BIG | {"web": 1000}, ["--budget", "math+code+flan=0.5"],
         "error: optimize: budgets math+code+flan <= 0.5 and max_repetition web = 1 (0.244 of the "
         "mix at most) cannot hold with shares summing to 1; raise a cap or a budget"),
        (BIG, ["--tokens", "10000000"],
         "error: optimize: max_repetition code = 4 (0.04 of the mix at most), flan = 4 (0.04 of "
         "the mix at most), math = 4 (0.04 of the mix at most), web = 1 (0.01 of the mix at most) "
         "cannot hold with shares summing to 1; raise a cap or a budget"),
        (BIG, ["--budget", "math+books=0.3"], "error: --budget math+books=0.3: 'books' is not a "
         "measured source (code, flan, math, web); name sources of the studies"),
        (BIG, ["--budget", "math"], "error: --budget 'math': write GROUP=SHARE, e.g. math+code=0.4"),
        (BIG, ["--model", "gbm"], "error: --model gbm: domain:web has 11 points; a boosted model "
         "needs at least 20"),
    ],
)  # fmt: skip
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, stores, extra, line):
    study = _fake_study(tmp_path, stores)
    out = tmp_path / "round.toml"
    code, _, err = _cli(["optimize", str(study), "--out", str(out), *extra], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(line), err
    assert not out.exists()


def test_cli_too_few_points(tmp_path, capsys):
    from midtrain.study.results import StudyResult

    study = _fake_study(tmp_path, BIG)
    res = StudyResult.load(study / "results.json")
    res.arms = res.arms[:1]  # control + one arm: 4 points, a law over 2 sources has 3 parameters
    res.save(study / "results.json")
    out = tmp_path / "round.toml"
    code, _, err = _cli(["optimize", str(study), "--out", str(out)], capsys)
    assert code == 2 and err.strip() == (
        "error: optimize: 4 points at 2 distinct mixes for a law with 3 parameters; run more "
        "arms (fractions or candidates) first"
    )
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# End to end on the tiny world of test_study_e2e: a real study, then the proposal from it

OPT_CANDS = """
[[candidates]]
name = "task-items"
mix = { taskitems = 1.0 }
fractions = [0.2, 0.5]
max_repetition = 50.0

[[candidates]]
name = "math"
mix = { math = 1.0 }
fractions = [0.2, 0.5]
max_repetition = 50.0

[[guards]]
domain = "web"
tolerance = 0.5
"""


@pytest.mark.slow
def test_optimize_end_to_end(world, tmp_path, capsys):  # noqa: F811 - the fixture
    from midtrain.integrate.config import load_round

    path = study_file(world, tmp_path, OPT_CANDS, seeds=(0, 1), tokens=4096)
    study = tmp_path / "study"
    assert _cli(["study", "run", str(path), "--out", str(study)], capsys)[0] == 0
    out = tmp_path / "round.toml"
    code, text, err = _cli(["optimize", str(study), "--out", str(out), "--budget",
                            "taskitems+math=0.6"], capsys)  # fmt: skip
    assert code == 0, err
    spec, cfg = load_round(out)  # 10 points (5 mixes) for a law over web, taskitems, math
    mix = spec.mix()
    assert mix.get("taskitems", 0) + mix.get("math", 0) <= 0.6 + 1e-6
    assert all(v <= 0.6 + 1e-6 for s, v in mix.items() if s != "web"), mix  # measured 0.5 + 0.1
    assert cfg.reuse == [str(study)] and "fit: 10 points at 5 distinct mixes" in text, text


def test_mean_of_task_laws_adds_what_one_exponential_cannot():
    """Two tasks, each helped by its own source: their mean is predicted by the mean of the two
    laws, and better than by one law on the mean (leave one mix out)."""
    from midtrain.optimize.fit import MeanOfLaws

    rng = np.random.default_rng(1)
    x = np.repeat(_x(_mixes()), 2, axis=0)
    ta = _law(np.array([0.0, -1.0, 0.0, 0.0, -6.0]), x)  # math
    tb = _law(np.array([0.0, -1.0, -6.0, 0.0, 0.0]), x)  # code
    ya, yb = ta + rng.normal(0, 0.005, len(x)), tb + rng.normal(0, 0.005, len(x))
    laws = [fit_law(x, y, SOURCES, ref=REF) for y in (ya, yb)]
    mean = MeanOfLaws(laws, ["a", "b"])
    one = fit_law(x, (ya + yb) / 2, SOURCES, ref=REF)
    assert mean.predict(x[:3]) == pytest.approx(
        (laws[0].predict(x[:3]) + laws[1].predict(x[:3])) / 2
    )
    assert mean.loo_rmse < one.loo_rmse, (mean.loo_rmse, one.loo_rmse)
    d, se = mean.delta(x[-1], x[0])
    assert se == pytest.approx(
        np.hypot(laws[0].delta(x[-1], x[0])[1], laws[1].delta(x[-1], x[0])[1]) / 2
    )


def test_guard_on_the_upper_bound_is_stricter(tmp_path):
    from midtrain.optimize.proposal import Z_UCB, optimize

    study = _fake_study(tmp_path, BIG, guard=0.01)
    mean = optimize([study], out=tmp_path / "r.toml", kl=0.0)
    ucb = optimize([study], out=tmp_path / "r.toml", kl=0.0, ucb=True)
    (g,), (gu,) = mean.guards, ucb.guards
    assert g.delta == pytest.approx(0.01, abs=1e-4)  # the guard binds on the mean
    assert gu.delta + Z_UCB * gu.se == pytest.approx(0.01, abs=1e-4) and gu.delta < g.delta
    assert ucb.primary.delta < mean.primary.delta


def test_gbm_proposal_writes_a_valid_round_within_the_budget(tmp_path, capsys):
    from midtrain.integrate.config import load_round

    study = _fake_study(tmp_path, BIG, guard=None)  # 20 per-run primary points, no guard
    out = tmp_path / "round.toml"
    args = ["optimize", str(study), "--out", str(out), "--model", "gbm", "--budget", "flan=0.2"]
    code, text, err = _cli(args, capsys)
    assert code == 0, err
    spec, _ = load_round(out)
    assert spec.mix().get("flan", 0) <= 0.2 + 1e-6 and "gbm" in text
