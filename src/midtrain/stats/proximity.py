"""Proximity advantage of a finished study's arms to its SFT sets, against the arms' SFT gains.

For a study with an `[sft_probe]`: each arm's mix (the one it trained on, (1 - f) base + f
candidate; 100% candidate for a continued-pretraining arm) is compared with each SFT set's
training rows (rendered with the probe's template, tokenised with the study checkpoint's
tokenizer) and so is the base mix; the difference is the arm's proximity advantage (Liu, Neubig
and Xiong 2025). Its SFT gain on the set is minus the delta of SFT validation loss against the
control (nats per token, higher is better), from the probe's analysis in results.json. Sets are
counted, compared and mixed in one mode of `midtrain.similarity` ("default", or "paper": the
paper's protocol); the table's settings record which.
The correlation of the two over arms is Pearson and Spearman; how much is said depends on the
number of arms (an arm's points on every set move together, so arms are the unit):

- p-values from a permutation test of the arms (each arm's gains moved with the arm, onto another
  arm's advantages): exact, all n! orders, up to 8 arms; 9,999 random orders above. It needs no
  normality, holds for the pooled scope (several points per arm) and is never 0: with 3 arms the
  smallest two-sided p is 2/3! = 1/3.
- intervals: none below 5 arms ("too few arms for an interval"; the points are printed), a Fisher z
  interval with 5-7 arms (approximate), a percentile bootstrap over arms from 8 arms on; an interval
  narrower than 0.01 (every resample gives the same r, e.g. a perfect order) is not given.

Plain dataclasses, for the report to render (`to_dict()` for JSON).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import permutations
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.errors import MidtrainError
from midtrain.similarity import TOP_K, SimilaritySettings, check_same_tokenizer, mixture, similarity
from midtrain.unigram import DEFAULT, DOCS, Unigram, raw_unigram, store_unigram

FORMAT = "midtrain-proximity/2"
ALL_SETS = "all sets"
RESAMPLES = 2000
MIN_INTERVAL_ARMS = 5  # below: no interval at all
MIN_BOOTSTRAP_ARMS = 8  # from here: percentile bootstrap over arms; below: Fisher z
EXACT_ORDERS = math.factorial(8)  # permutation p by enumeration up to 8 arms
PERMUTATIONS = 9999  # random orders above
MIN_WIDTH = 0.01  # narrower intervals are degenerate at the 2 decimals shown


@dataclass
class ProximityRow:
    """One arm on one SFT set."""

    arm: str
    set: str
    mix: dict[str, float]
    fraction: float
    cpt: bool
    similarity: float  # sim(arm mix, set)
    base_similarity: float  # sim(base mix, set)
    advantage: float  # similarity - base_similarity
    sft_gain: float | None  # minus delta SFT val loss vs the control (nats/token); None: no probe
    sft_gain_ci: list[float] | None = None


@dataclass
class Correlation:
    """Proximity advantage vs SFT gain over arms (on one set, or on all sets pooled)."""

    scope: str  # a set's name, or "all sets"
    n_arms: int
    n_points: int
    pearson: float | None
    pearson_p: float | None  # two-sided, permutation of arms (None: arms on different sets)
    spearman: float | None
    spearman_p: float | None
    pearson_ci: list[float] | None  # see `interval`; None below MIN_INTERVAL_ARMS or degenerate
    spearman_ci: list[float] | None
    resamples: int  # bootstrap resamples in which the correlation was defined
    confidence: float
    interval: str | None = None  # "bootstrap" (>= 8 arms) | "fisher-z" (5-7 arms) | None
    p_test: str | None = None  # how the p-values were computed
    notes: list[str] = field(default_factory=list)  # why an interval or a p-value is missing


@dataclass
class ProximityTable:
    """A study's proximity table; `to_dict()` / `from_dict()` round-trip it through JSON."""

    study: str
    dir: str
    sets: list[str]
    base: dict[str, float]
    rows: list[ProximityRow]
    correlations: list[Correlation]
    matrix: dict[str, dict[str, dict[str, float]]]  # source -> set -> similarity parts
    settings: SimilaritySettings = field(default_factory=dict)  # type: ignore[assignment]
    format: str = FORMAT

    def to_dict(self) -> dict[str, Any]:  # proximity.json's object
        return asdict(self)

    def correlation_notes(self) -> list[str]:
        """Why an interval or a p-value is missing: each note once, with the scopes it holds for."""
        scopes: dict[str, list[str]] = {}
        for c in self.correlations:
            for n in c.notes:
                scopes.setdefault(n, []).append(c.scope)
        return [f"{', '.join(where)}: {n}" for n, where in scopes.items()]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProximityTable:  # proximity.json as read
        if d.get("format") != FORMAT:
            raise MidtrainError(f"proximity table: format {d.get('format')!r} is not {FORMAT!r}; "
                                "compute it again with `midtrain similarity --study`")  # fmt: skip
        rows = [ProximityRow(**r) for r in d["rows"]]
        corr = [Correlation(**c) for c in d["correlations"]]
        return cls(**{**d, "rows": rows, "correlations": corr})


def load_study_dir(path: str | Path) -> tuple[Any, Any]:
    """(StudyConfig, StudyResult) of a finished study directory (study.json, results.json)."""
    from midtrain.io import read_json
    from midtrain.schema import validate
    from midtrain.study.config import StudyConfig
    from midtrain.study.results import StudyResult

    out = Path(path)
    for f in ("study.json", "results.json"):
        if not (out / f).is_file():
            raise MidtrainError(f"--study {out}: no {f}; pass a study directory that `midtrain "
                                "study run` finished")  # fmt: skip
    try:
        cfg = validate(StudyConfig, read_json(out / "study.json").get("config"), "study.json")
        res = StudyResult.load(out / "results.json")
    except (ValueError, AttributeError) as e:
        raise MidtrainError(f"--study {out}: unreadable study.json/results.json ({e}); "
                            "re-run `midtrain study run`") from None  # fmt: skip
    return cfg, res


def proximity_table(
    study: str | Path | Any, *, config: Any = None, docs: int = DOCS, top_k: int = TOP_K,
    seed: int = 0, resamples: int = RESAMPLES, confidence: float = 0.95, mode: str = DEFAULT,
) -> ProximityTable:  # fmt: skip
    """Each arm's proximity advantage to each SFT set, and its correlation with the SFT gains.

    `study` is a study directory, or a `StudyResult` with its `StudyConfig` as `config`; `mode`
    is how sets are counted, compared and mixed (`midtrain.unigram.MODES`).
    """
    if isinstance(study, str | Path):
        where = str(study)
        cfg, res = load_study_dir(study)
    else:
        where, cfg, res = "", config, study
        if cfg is None:
            raise MidtrainError("proximity_table: a StudyResult needs its StudyConfig (config=)")
    if cfg.sft_probe is None or res.probe is None:
        raise MidtrainError(f"--study {where or res.study}: the study has no SFT probe; add an "
                            "[sft_probe] section and run it again")  # fmt: skip
    sources, sets = _count(cfg, res, docs, seed, mode)
    base = mixture(sources, cfg.base, "base")
    rows = []
    for arm in res.arms:
        mix = mixture(sources, {m.source: m.ratio for m in arm.mix}, arm.arm)
        rows += [_row(arm, s, mix, base, top_k) for s in sets.values()]
    corr = [correlate(rows, scope, resamples, seed, confidence) for scope in [ALL_SETS, *sets]]
    grid = {n: {s: similarity(u, t, top_k).to_dict() for s, t in sets.items()}
            for n, u in sources.items()}  # fmt: skip
    settings = {"docs": docs, "top_k": top_k, "seed": seed, "resamples": resamples, "mode": mode}
    return ProximityTable(res.study, where, list(sets), dict(cfg.base), rows, corr, grid, settings)


def _count(
    cfg: Any, res: Any, docs: int, seed: int, mode: str = DEFAULT
) -> tuple[dict[str, Unigram], dict[str, Unigram]]:
    """The unigram counts of every source a mix uses and of every SFT set's training rows."""
    from midtrain.data.store import open_store
    from midtrain.data.tokenizer import load_tokenizer

    used = sorted({s for s, r in cfg.base.items() if r > 0}
                  | {m.source for a in res.arms for m in a.mix if m.ratio > 0})  # fmt: skip
    sources = {
        s: store_unigram(open_store(cfg.stores[s], f"stores.{s}"), s, docs, seed, mode)
        for s in used
    }
    try:
        tok = load_tokenizer(cfg.checkpoint)
    except MidtrainError as e:
        raise MidtrainError(f"checkpoint (its tokenizer tokenises the SFT sets): {e}") from None
    sets = {}
    for i, s in enumerate(cfg.sft_probe.sets):
        try:
            sets[s.name] = raw_unigram(s.train, s.name, tok, docs, seed, cfg.sft_probe.template,
                                       mode=mode)  # fmt: skip
        except MidtrainError as e:
            raise MidtrainError(f"sft_probe.sets[{i}].train: {e}") from None
    check_same_tokenizer([*sources.values(), *sets.values()])
    return sources, sets


def _row(arm: Any, target: Unigram, mix: Unigram, base: Unigram, top_k: int) -> ProximityRow:
    sim, base_sim = similarity(mix, target, top_k).score, similarity(base, target, top_k).score
    delta = arm.probe.sets.get(target.name) if arm.probe else None
    return ProximityRow(
        arm=arm.arm, set=target.name, mix={m.source: m.ratio for m in arm.mix},
        fraction=arm.fraction, cpt=arm.cpt, similarity=sim, base_similarity=base_sim,
        advantage=sim - base_sim,
        sft_gain=-delta.delta_val_loss if delta else None,
        sft_gain_ci=sorted(-x for x in delta.ci) if delta else None,
    )  # fmt: skip


def correlate(
    rows: list[ProximityRow], scope: str = ALL_SETS, resamples: int = RESAMPLES, seed: int = 0,
    confidence: float = 0.95,
) -> Correlation:  # fmt: skip
    """Pearson and Spearman of advantage vs SFT gain over the rows of `scope` (None where fewer
    than 3 points or no spread), with permutation p-values and an interval as many arms allow."""
    from scipy import stats

    pts = [r for r in rows if r.sft_gain is not None and scope in (ALL_SETS, r.set)]
    arms = sorted({r.arm for r in pts})
    x = np.array([r.advantage for r in pts])
    y = np.array([r.sft_gain for r in pts], dtype=np.float64)
    out = Correlation(scope, len(arms), len(pts), None, None, None, None, None, None, 0, confidence)
    if not _defined(x, y):
        return out
    out.pearson = float(stats.pearsonr(x, y).statistic)
    out.spearman = float(stats.spearmanr(x, y).statistic)
    _permutation(out, pts, arms, seed)
    if len(arms) < MIN_INTERVAL_ARMS:
        out.notes.append(f"too few arms for an interval ({len(arms)} arms, {MIN_INTERVAL_ARMS} "
                         "needed): read the points")  # fmt: skip
    elif len(arms) < MIN_BOOTSTRAP_ARMS:
        out.interval = "fisher-z"
        out.pearson_ci = _fisher(out.pearson, len(arms), confidence, spearman=False)
        out.spearman_ci = _fisher(out.spearman, len(arms), confidence, spearman=True)
    else:
        out.interval = "bootstrap"
        boot = _bootstrap(x, y, [arms.index(r.arm) for r in pts], len(arms), resamples, seed)
        out.resamples = len(boot)
        if len(boot):
            q = [(1 - confidence) / 2, (1 + confidence) / 2]
            out.pearson_ci = [float(v) for v in np.quantile(boot[:, 0], q)]
            out.spearman_ci = [float(v) for v in np.quantile(boot[:, 1], q)]
    for name in ("pearson", "spearman") if out.interval else ():
        ci = getattr(out, f"{name}_ci")
        if ci is None or not all(map(math.isfinite, ci)) or ci[1] - ci[0] < MIN_WIDTH:
            setattr(out, f"{name}_ci", None)
            out.notes.append(f"{name}: no interval ({out.interval} is degenerate: "
                             f"r = {getattr(out, name):+.3f} with {len(arms)} arms)")  # fmt: skip
    return out


def _defined(x: np.ndarray, y: np.ndarray) -> bool:
    return len(x) >= 3 and bool(np.ptp(x) > 0) and bool(np.ptp(y) > 0)


def _grid(pts: list[ProximityRow], arms: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(advantage, gain) as arms x sets matrices; None unless every arm has one point per set."""
    sets = sorted({r.set for r in pts})
    cell = {(r.arm, r.set): r for r in pts}
    if len(cell) != len(pts) or len(cell) != len(arms) * len(sets):
        return None
    x = np.array([[cell[a, s].advantage for s in sets] for a in arms])
    y = np.array([[cell[a, s].sft_gain for s in sets] for a in arms], dtype=np.float64)
    return x, y


def _permutation(out: Correlation, pts: list[ProximityRow], arms: list[str], seed: int) -> None:
    """Two-sided permutation p-values of Pearson and Spearman: the arms' rows of gains reordered
    against the advantages (every order up to 8 arms, else PERMUTATIONS random ones)."""
    from scipy.stats import rankdata

    grid = _grid(pts, arms)
    if grid is None:
        out.notes.append("no p-value: the arms have points on different sets")
        return
    x, y = grid
    n = len(arms)
    exact = math.factorial(n) <= EXACT_ORDERS
    if exact:  # the identity is among them: p >= 2 / n!
        orders = np.array(list(permutations(range(n))))
    else:  # the observed order counts as one more (p >= 1 / (PERMUTATIONS + 1))
        rng = np.random.default_rng([seed, 0x5045524D])
        orders = rng.permuted(np.tile(np.arange(n), (PERMUTATIONS, 1)), axis=1)
    ranks = (rankdata(x, axis=None).reshape(x.shape), rankdata(y, axis=None).reshape(y.shape))
    for name, (a, b) in (("pearson", (x, y)), ("spearman", ranks)):
        a, b = a - a.mean(), b - b.mean()
        null = np.einsum("ij,pij->p", a, b[orders])
        seen = float(np.sum(a * b))
        tol = 1e-9 * max(abs(seen), float(np.sqrt(np.sum(a * a) * np.sum(b * b))))
        extra = 0 if exact else 1
        ge = (np.sum(null >= seen - tol) + extra) / (len(null) + extra)
        le = (np.sum(null <= seen + tol) + extra) / (len(null) + extra)
        setattr(out, f"{name}_p", float(min(1.0, 2 * min(ge, le))))
    out.p_test = (f"exact permutation of {n} arms ({len(orders):,} orders)" if exact
                  else f"permutation of {n} arms ({PERMUTATIONS:,} random orders)")  # fmt: skip


def _fisher(r: float, n: int, confidence: float, *, spearman: bool) -> list[float] | None:
    """Fisher z interval over n arms (Spearman: Bonett-Wright variance); None at |r| = 1."""
    from scipy.stats import norm

    if abs(r) >= 1:
        return None
    se = math.sqrt(((1 + r * r / 2) if spearman else 1.0) / (n - 3))
    z, q = math.atanh(r), float(norm.ppf((1 + confidence) / 2))
    return [math.tanh(z - q * se), math.tanh(z + q * se)]


def _bootstrap(x: np.ndarray, y: np.ndarray, arm_of: list[int], n_arms: int, resamples: int,
               seed: int) -> np.ndarray:  # fmt: skip
    """(pearson, spearman) per resample of the arms, with replacement; undefined ones skipped."""
    from scipy.stats import rankdata

    rng = np.random.default_rng([seed, 0x424F4F54])
    members = [np.flatnonzero(np.asarray(arm_of) == a) for a in range(n_arms)]
    out = []
    for _ in range(resamples):
        idx = np.concatenate([members[a] for a in rng.integers(0, n_arms, n_arms)])
        xb, yb = x[idx], y[idx]
        if _defined(xb, yb):
            rx, ry = rankdata(xb), rankdata(yb)
            out.append((np.corrcoef(xb, yb)[0, 1], np.corrcoef(rx, ry)[0, 1]))
    return np.array(out).reshape(-1, 2)
