"""Token-unigram similarity between data sets (Liu, Neubig and Xiong 2025), and proximity advantage.

A set's distribution is the unigram frequency of its token ids under one tokenizer, counted over
`docs` documents sampled without replacement by a seeded generator (all documents when it has
fewer). From a token store, the documents are the training split's EOS-delimited runs (the EOS
itself is not counted; the held-out split is not sampled); from raw files, the reader's documents
(`data/readers.py`; a JSONL file of SFT rows is rendered as prompt + response text with the SFT
template, EOS left out), tokenised with the given tokenizer.

Two distributions p and q are compared on K token types (default 50,000): the K types with the
largest p + q (each set's normalised frequency, so a bigger sample does not pick the types; ties
go to the lower id). On them:

- cosine: of the two frequency vectors;
- Jaccard: of the vocabularies, the types with frequency > 0 among the K;
- JS: the Jensen-Shannon divergence of p and q renormalised on the K types;
- score = 0.4 cosine + 0.3 Jaccard + 0.3 / (1 + JS): 1 for identical sets.

Two modes (`MODES`), chosen when the sets are counted and carried by them:

- "default": every token of a sampled document counts; JS in bits (log base 2, in [0, 1]; the
  score of disjoint sets is 0.15); a mix weighs its sources by tokens: sum of ratio x each
  source's normalised frequencies, so a source with ratio r holds a share r of the mix's tokens.
- "paper": the paper's code: only the first 512 tokens of a document count; JS in nats (natural
  log, in [0, ln 2]; disjoint sets score 0.3 / (1 + ln 2) = 0.177); a mix weighs its sources by
  documents: each sampled document of a source with ratio r and n sampled documents weighs r / n,
  so the source holds a share r of the mix's documents (the expected counts of a mix sampled
  with r x N documents of each source, without the noise of a second sample).

The paper's code keeps each set's top types; when K is at least the number of types the two sets
use (always true of the defaults on small samples) both definitions give the same numbers; that
choice is the one difference left between "paper" and the paper's code. A mix needs no new
sampling, so the proximity advantage sim(mix, target) - sim(base, target) is cheap.
docs/similarity.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np

from midtrain.errors import MidtrainError

DOCS = 1000
TOP_K = 50_000
WEIGHTS = (0.4, 0.3, 0.3)  # cosine, Jaccard, 1 / (1 + JS)
SEED_TAG = 0x53494D  # "SIM": the sampling stream is its own, not the held-out split's
EOS_SCAN = 1 << 26  # tokens per chunk when finding a store's document ends


@dataclass(frozen=True)
class Mode:
    """How sets are counted (`max_doc_tokens`), compared (`js_base`) and mixed (`mix_by`)."""

    name: str
    max_doc_tokens: int | None  # the first tokens of a document that count (None: all)
    js_base: float  # log base of the Jensen-Shannon divergence
    mix_by: Literal["tokens", "documents"]  # what a mix's ratios are shares of

    @property
    def js_unit(self) -> str:
        return {2.0: "bits", math.e: "nats"}.get(self.js_base, f"log base {self.js_base:g}")


DEFAULT = "default"
PAPER = "paper"
MODES = {
    DEFAULT: Mode(DEFAULT, None, 2.0, "tokens"),
    PAPER: Mode(PAPER, 512, math.e, "documents"),
}


def get_mode(name: str) -> Mode:
    """The mode called `name` (a one-line error naming the known ones)."""
    if name not in MODES:
        raise MidtrainError(f"--mode {name!r}: unknown; use one of {', '.join(MODES)}")
    return MODES[name]


@dataclass
class Unigram:
    """One set's token counts (a mix's: its weighted frequencies) under one tokenizer."""

    name: str
    counts: np.ndarray  # per token id: int64 counts of a sample, float64 frequencies of a mix
    tokenizer_hash: str
    where: str  # the path, or the mix's recipe
    n_docs: int = 0  # documents counted (of a mix: its sources')
    n_available: int = 0  # documents the set has
    doc_ids: np.ndarray | None = None  # which documents were sampled (sorted)
    mode: str = DEFAULT  # how it was counted, and how it is compared and mixed (`MODES`)

    @property
    def probs(self) -> np.ndarray:
        total = float(self.counts.sum())
        return self.counts / total if total > 0 else np.zeros(len(self.counts))

    @property
    def n_tokens(self) -> int:
        return int(self.counts.sum()) if self.counts.dtype.kind in "iu" else 0

    @property
    def n_types(self) -> int:
        return int(np.count_nonzero(self.counts))

    def summary(self) -> SetSummary:
        return {"where": self.where, "docs": self.n_docs, "available_docs": self.n_available,
                "tokens": self.n_tokens, "types": self.n_types}  # fmt: skip


class SetSummary(TypedDict):
    """One counted set, as `midtrain similarity --json` reports it."""

    where: str
    docs: int
    available_docs: int
    tokens: int
    types: int


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


# ------------------------------------------------------------------------------------------------
# Counting


def sample_docs(n_docs: int, docs: int, seed: int) -> np.ndarray:
    """Sorted indices of min(docs, n_docs) documents, without replacement, seeded."""
    if docs < 1:
        raise MidtrainError(f"--docs {docs}: must be >= 1, e.g. {DOCS}")
    k = min(docs, n_docs)
    rng = np.random.default_rng([seed, SEED_TAG])
    return np.sort(rng.choice(n_docs, size=k, replace=False)) if k else np.empty(0, np.int64)


def doc_bounds(ids: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of every EOS-delimited document (end excludes the EOS); a final run of ids
    without an EOS is a document too. Scanned in chunks: memory is one int64 per document."""
    ends = [
        np.flatnonzero(ids[a : a + EOS_SCAN] == eos_id) + a for a in range(0, len(ids), EOS_SCAN)
    ]
    end = np.concatenate(ends).astype(np.int64) if ends else np.empty(0, np.int64)
    start = np.concatenate([[0], end[:-1] + 1]).astype(np.int64) if len(end) else end.copy()
    last = int(end[-1]) + 1 if len(end) else 0
    if last < len(ids):
        start, end = np.append(start, last), np.append(end, len(ids))
    return start, end


def store_unigram(
    store: Any, name: str, docs: int = DOCS, seed: int = 0, mode: str = DEFAULT
) -> Unigram:
    """Counts over `docs` sampled training documents of a token store (`data.store.TokenStore`);
    in a mode with `max_doc_tokens`, each document's first tokens only."""
    cut = get_mode(mode).max_doc_tokens
    ids = store.train_tokens()
    start, end = doc_bounds(ids, store.eos_id)
    if cut is not None:
        end = np.minimum(end, start + cut)
    pick = sample_docs(len(start), docs, seed)
    counts = np.zeros(store.vocab_size, np.int64)
    for lo in range(0, len(pick), 256):  # bounded memory for long documents
        part = pick[lo : lo + 256]
        chunk = np.concatenate([ids[start[i] : end[i]] for i in part]) if len(part) else ids[:0]
        counts += np.bincount(chunk.astype(np.int64), minlength=store.vocab_size)[
            : store.vocab_size
        ]
    return Unigram(name, counts, store.tokenizer_hash, str(store.path), len(pick), len(start), pick,
                   mode)  # fmt: skip


def text_unigram(
    texts: Sequence[str], name: str, tok: Any, where: str, docs: int = DOCS, seed: int = 0,
    mode: str = DEFAULT,
) -> Unigram:  # fmt: skip
    """Counts over `docs` sampled texts, tokenised with `tok` (no special tokens added)."""
    from midtrain.data.tokenizer import tokenizer_hash

    pick = sample_docs(len(texts), docs, seed)
    counts = _count_texts([texts[i] for i in pick], tok, get_mode(mode).max_doc_tokens)
    return Unigram(name, counts, tokenizer_hash(tok), where, len(pick), len(texts), pick, mode)


def raw_unigram(
    path: str | Path, name: str, tok: Any, docs: int = DOCS, seed: int = 0, template: Any = None,
    text_field: str = "text", mode: str = DEFAULT,
) -> Unigram:  # fmt: skip
    """Counts over `docs` sampled documents of raw input, in two streaming passes (count, then
    keep the sampled documents): a file larger than memory works."""
    from midtrain.data.tokenizer import tokenizer_hash

    cut = get_mode(mode).max_doc_tokens
    n = sum(1 for _ in iter_documents(path, text_field, template))
    if n == 0:
        raise MidtrainError(f"{path} has no documents; pass a non-empty file")
    pick = sample_docs(n, docs, seed)
    keep = set(pick.tolist())
    texts = [t for i, t in enumerate(iter_documents(path, text_field, template)) if i in keep]
    counts = _count_texts(texts, tok, cut)
    return Unigram(name, counts, tokenizer_hash(tok), str(path), len(pick), n, pick, mode)


def _count_texts(texts: list[str], tok: Any, cut: int | None = None) -> np.ndarray:
    """Token counts of `texts` (of each one's first `cut` tokens when `cut` is set)."""
    from midtrain.data.tokenizer import encode_docs, vocab_size

    n_vocab = vocab_size(tok)
    counts = np.zeros(n_vocab, np.int64)
    for lo in range(0, len(texts), 256):
        enc = [e[:cut] for e in encode_docs(tok, texts[lo : lo + 256])]
        if enc:
            counts += np.bincount(np.concatenate(enc), minlength=n_vocab)[:n_vocab]
    return counts


def iter_documents(
    path: str | Path, text_field: str = "text", template: Any = None
) -> Iterator[str]:
    """Every document of a raw input (file or folder): the readers' documents; a JSONL file of SFT
    rows ({"prompt", "response"} or {"messages"}) gives each row rendered with `template`."""
    from midtrain.data.readers import iter_texts, resolve_inputs

    for inp in resolve_inputs([path]):
        if inp.kind == "npy":
            raise MidtrainError(f"{inp.path}: holds tokens, not text; prepare it as a token store")
        if inp.kind == "jsonl" and _is_sft_file(inp.path, text_field):
            yield from _sft_texts(inp.path, template)
        else:
            yield from iter_texts([inp], text_field)


def _is_sft_file(path: Path, text_field: str) -> bool:
    from midtrain.sft.data import read_rows

    for _, row in read_rows(path, "input"):
        keys = set(row) if isinstance(row, dict) else set()
        return text_field not in keys and ("messages" in keys or {"prompt", "response"} <= keys)
    return False


def _sft_texts(path: Path, template: Any) -> Iterator[str]:
    from midtrain.sft.config import SftTemplate
    from midtrain.sft.data import EOS, read_rows, render

    t = template or SftTemplate()
    for where, row in read_rows(path, "input"):
        yield "".join(s for s, _ in render(row, where, t) if s is not EOS)


# ------------------------------------------------------------------------------------------------
# Comparing


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


# ------------------------------------------------------------------------------------------------
# Loading a set named on the command line


def load_set(
    name: str, path: str | Path, where: str, tok: Any = None, docs: int = DOCS, seed: int = 0,
    template: Any = None, mode: str = DEFAULT,
) -> Unigram:  # fmt: skip
    """A token store folder (sampled from its training split) or raw text/JSONL (needs `tok`)."""
    from midtrain.data.store import open_store
    from midtrain.data.tokenizer import tokenizer_hash

    path = Path(path)
    if not path.exists():
        raise MidtrainError(f"{where}: {path} not found; pass a token store folder or a "
                            "text/jsonl file")  # fmt: skip
    if (path / "manifest.json").is_file():
        store = open_store(path, where)
        if tok is not None and tokenizer_hash(tok) != store.tokenizer_hash:
            raise MidtrainError(
                f"{where}: store {path} was made with tokenizer {store.tokenizer_hash[:12]}, not "
                f"--tokenizer's {tokenizer_hash(tok)[:12]}; pass the tokenizer the stores were "
                "prepared with"
            )
        return store_unigram(store, name, docs, seed, mode)
    if tok is None:
        raise MidtrainError(f"{where}: {path} is raw text, not a token store; pass --tokenizer "
                            "CKPT (a checkpoint or tokenizer folder) to tokenise it")  # fmt: skip
    try:
        return raw_unigram(path, name, tok, docs, seed, template, mode=mode)
    except MidtrainError as e:
        raise MidtrainError(f"{where}: {e}") from None
