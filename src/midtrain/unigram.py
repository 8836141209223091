"""Token-unigram distributions of data sets: how `midtrain similarity` counts a set.

A set's distribution is the unigram frequency of its token ids under one tokenizer, counted over
`docs` documents sampled without replacement by a seeded generator (all documents when it has
fewer). From a token store, the documents are the training split's EOS-delimited runs (the EOS
itself is not counted; the held-out split is not sampled); from raw files, the reader's documents
(`data/readers.py`; a JSONL file of SFT rows is rendered as prompt + response text with the SFT
template, EOS left out), tokenised with the given tokenizer.

Two modes (`MODES`), chosen when the sets are counted and carried by them:

- "default": every token of a sampled document counts; JS in bits (log base 2, in [0, 1]; the
  score of disjoint sets is 0.15); a mix weighs its sources by tokens: sum of ratio x each
  source's normalised frequencies, so a source with ratio r holds a share r of the mix's tokens.
- "paper": the paper's code: only the first 512 tokens of a document count; JS in nats (natural
  log, in [0, ln 2]; disjoint sets score 0.3 / (1 + ln 2) = 0.177); a mix weighs its sources by
  documents: each sampled document of a source with ratio r and n sampled documents weighs r / n,
  so the source holds a share r of the mix's documents (the expected counts of a mix sampled
  with r x N documents of each source, without the noise of a second sample).

The comparison of two distributions, and of mixes, is `similarity.py`; docs/similarity.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np

from midtrain.errors import MidtrainError

DOCS = 1000
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
