"""Token-unigram similarity between data sets (Liu, Neubig and Xiong 2025), and proximity advantage.

Each set is a token-unigram distribution counted by `unigram.py` (which documents, which
tokens, in which mode).

Two distributions p and q are compared on K token types (default 50,000): the K types with the
largest p + q (each set's normalised frequency, so a bigger sample does not pick the types; ties
go to the lower id). On them:

- cosine: of the two frequency vectors;
- Jaccard: of the vocabularies, the types with frequency > 0 among the K;
- JS: the Jensen-Shannon divergence of p and q renormalised on the K types;
- score = 0.4 cosine + 0.3 Jaccard + 0.3 / (1 + JS): 1 for identical sets.

Two modes (`unigram.MODES`), chosen when the sets are counted and carried by them: "default"
(JS in bits, a mix weighs its sources by tokens) and "paper" (the paper's code: the first 512
tokens of a document, JS in nats, a mix weighs its sources by documents).

The paper's code keeps each set's top types; when K is at least the number of types the two sets
use (always true of the defaults on small samples) both definitions give the same numbers; that
choice is the one difference left between "paper" and the paper's code. A mix needs no new
sampling, so the proximity advantage sim(mix, target) - sim(base, target) is cheap.
docs/similarity.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypedDict

import numpy as np

from midtrain.errors import MidtrainError
from midtrain.unigram import DEFAULT, Mode, SetSummary, Unigram, get_mode

TOP_K = 50_000
WEIGHTS = (0.4, 0.3, 0.3)  # cosine, Jaccard, 1 / (1 + JS)


class SimilaritySettings(TypedDict, total=False):
    """How sets were compared: documents, top-k types, seed, mode (results without one: the
    default), the score's formula; a study's proximity table adds its bootstrap `resamples`."""

    docs: int
    top_k: int
    seed: int
    mode: str
    score: str
    resamples: int


class TargetAdvantage(TypedDict):
    advantage: float  # sim(mix, target) - sim(base, target)
    mix_score: float
    base_score: float


class MixProximity(TypedDict):
    mix: dict[str, float]
    targets: dict[str, TargetAdvantage]


class Comparison(TypedDict, total=False):
    """`midtrain similarity`'s result: every set, the source x target matrix (each cell
    `Similarity.to_dict()`), and each mix's proximity advantage over `base` when mixes are given."""

    settings: SimilaritySettings
    sets: dict[str, SetSummary]
    matrix: dict[str, dict[str, dict[str, float]]]
    proximity: dict[str, MixProximity]
    base: str


@dataclass(frozen=True)
class Similarity:
    """The paper's score and its three parts, on `k` token types."""

    cosine: float
    jaccard: float
    js: float  # Jensen-Shannon divergence: bits (mode "default") or nats ("paper")
    score: float
    k: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def check_same_tokenizer(sets: Sequence[Unigram]) -> None:
    """Every set was counted with one tokenizer (a one-line error naming the first that was not)."""
    for s in sets[1:]:
        if s.tokenizer_hash != sets[0].tokenizer_hash:
            raise MidtrainError(
                f"{s.name} ({s.where}): tokenizer {s.tokenizer_hash[:12]} differs from "
                f"{sets[0].name}'s {sets[0].tokenizer_hash[:12]}; compare sets made with one "
                "tokenizer (prepare the stores with the same --tokenizer)"
            )


def check_same_mode(sets: Sequence[Unigram]) -> str:
    """The one mode every set was counted in (a one-line error naming the first that differs)."""
    for s in sets[1:]:
        if s.mode != sets[0].mode:
            raise MidtrainError(
                f"{s.name} ({s.where}): counted in mode {s.mode!r}, {sets[0].name} in "
                f"{sets[0].mode!r}; count every set compared in one mode"
            )
    return sets[0].mode if sets else DEFAULT


def top_types(p: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The `k` types with the largest p + q that either set uses (ties: the lower id), sorted."""
    if k < 1:
        raise MidtrainError(f"--top-k {k}: must be >= 1, e.g. {TOP_K}")
    mass = p + q
    used = np.flatnonzero(mass > 0)
    if len(used) <= k:
        return used
    order = np.argsort(-mass[used], kind="stable")[:k]
    return np.sort(used[order])


def similarity(
    a: Unigram | np.ndarray, b: Unigram | np.ndarray, top_k: int = TOP_K, mode: str | None = None
) -> Similarity:
    """The paper's similarity of two sets (or two frequency vectors) on their top-k types; JS in
    the log base of `mode` (default: the sets' own mode; "default" for bare vectors)."""
    sets = [x for x in (a, b) if isinstance(x, Unigram)]
    base = get_mode(mode or check_same_mode(sets)).js_base
    p, q = (x.probs if isinstance(x, Unigram) else np.asarray(x, np.float64) for x in (a, b))
    n = max(len(p), len(q))
    p, q = np.pad(p, (0, n - len(p))), np.pad(q, (0, n - len(q)))
    keep = top_types(p, q, top_k)
    p, q = p[keep], q[keep]
    cos, js = _cosine(p, q), _js(p, q, base)
    union = np.count_nonzero((p > 0) | (q > 0))
    jac = float(np.count_nonzero((p > 0) & (q > 0)) / union) if union else 0.0
    w_cos, w_jac, w_js = WEIGHTS
    score = w_cos * cos + w_jac * jac + w_js / (1.0 + js)
    return Similarity(cosine=cos, jaccard=jac, js=js, score=float(score), k=len(keep))


def _cosine(p: np.ndarray, q: np.ndarray) -> float:
    norm = float(np.linalg.norm(p) * np.linalg.norm(q))
    return float(np.clip(p @ q / norm, 0.0, 1.0)) if norm > 0 else 0.0


def _js(p: np.ndarray, q: np.ndarray, base: float = 2.0) -> float:
    """Jensen-Shannon divergence in log base `base`: scipy's distance squared; its maximum,
    log_base(2), when one side is empty."""
    from scipy.spatial.distance import jensenshannon

    top = math.log(2, base)
    if p.sum() <= 0 or q.sum() <= 0:
        return top
    return float(np.clip(jensenshannon(p, q, base=base) ** 2, 0.0, top))


def mixture(parts: Mapping[str, Unigram], ratios: Mapping[str, float], name: str) -> Unigram:
    """A mix's distribution, in its sources' mode: by tokens, the sum of ratio x each source's
    normalised frequencies; by documents, each sampled document of a source weighs ratio / the
    source's sampled documents (the source holds that share of the mix's documents)."""
    from midtrain.mix.spec import check_ratios

    try:
        check_ratios(ratios, "the mix's ratios")
    except ValueError as e:
        raise MidtrainError(f"mix {name}: {e}") from None
    missing = sorted(set(ratios) - set(parts))
    if missing:
        raise MidtrainError(f"mix {name}: unknown source {missing[0]!r}; known: "
                            f"{', '.join(sorted(parts))}")  # fmt: skip
    used = [parts[s] for s, r in ratios.items() if r > 0]
    check_same_tokenizer(used)
    mode = check_same_mode(used)
    n = max(len(u.counts) for u in used)
    freq = np.zeros(n, np.float64)
    for s, r in ratios.items():
        if r > 0:
            p = _mix_part(parts[s], get_mode(mode), name)
            freq[: len(p)] += r / sum(ratios.values()) * p
    recipe = ", ".join(f"{s}:{r:g}" for s, r in ratios.items())
    return Unigram(name, freq / freq.sum() if freq.sum() > 0 else freq, used[0].tokenizer_hash,
                   recipe, sum(u.n_docs for u in used), sum(u.n_available for u in used),
                   mode=mode)  # fmt: skip


def _mix_part(u: Unigram, mode: Mode, mix: str) -> np.ndarray:
    """What a source adds to a mix per unit of ratio: its frequencies (by tokens), or its counts
    per sampled document (by documents)."""
    if mode.mix_by == "tokens":
        return u.probs
    if u.n_docs < 1 or u.counts.dtype.kind not in "iu":
        raise MidtrainError(f"mix {mix}: {u.name} is not a sample of documents; mix by documents "
                            "the sets counted from stores or files")  # fmt: skip
    return u.counts / u.n_docs


def proximity_advantage(mix: Unigram, base: Unigram, target: Unigram, top_k: int = TOP_K) -> float:
    """sim(mix, target) - sim(base, target): how much closer the mix is to the target."""
    return similarity(mix, target, top_k).score - similarity(base, target, top_k).score


def matrix(
    sources: Sequence[Unigram], targets: Sequence[Unigram], top_k: int = TOP_K
) -> dict[str, dict[str, Similarity]]:
    """{source: {target: Similarity}}, after checking every set shares one tokenizer and mode."""
    check_same_tokenizer([*sources, *targets])
    check_same_mode([*sources, *targets])
    return {s.name: {t.name: similarity(s, t, top_k) for t in targets} for s in sources}
