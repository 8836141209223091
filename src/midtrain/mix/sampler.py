"""The mixture sampler: exact ratios, deterministic order, resumable from a position.

A mix is a list of `MixComponent(source, ratio, max_repetition)`. Each source's training stream is
cut into `n_tokens // seq_len` windows of `seq_len` tokens. For a budget of `total_sequences`:

1. Allocation: source s gets `ratio_s * total_sequences` sequences, rounded by largest remainder, so
   its share of tokens is exact to within one sequence and the counts sum to the budget.
2. Interleaving: the k-th sequence of source s (k < n_s) gets the key `(k + u) / n_s` with u a
   seeded uniform draw in [0, 1); positions are the keys in sorted order. The order is random (a
   function of the seed) yet every prefix of the run holds each source close to its ratio.
3. Windows: the k-th sequence of a source is window `perm_e[k mod W]` of epoch `e = k // W`, with
   `perm_e` a seeded permutation of the W windows per epoch (the last epoch may be partial).

`sequences(start, count)` is a pure function of (seed, config, position): resuming is the position
alone, and no source is ever loaded into RAM (rows are gathered from the memory maps).
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from midtrain.data.store import TokenStore
from midtrain.errors import MidtrainError
from midtrain.io import hash_obj
from midtrain.mix.spec import MixComponent, validate_mix

_PERM_CACHE = 8  # cached per-epoch window permutations (4 bytes per window each)


@dataclass(frozen=True)
class MixRow:
    """One source of a planned mix: what the run asks of it and what the store holds."""

    source: str
    ratio: float
    sequences: int
    tokens_requested: int
    tokens_available: int
    epochs: float
    max_repetition: float


def allocate(ratios: Sequence[float], total: int) -> list[int]:
    """Largest-remainder allocation of `total` among `ratios` (ties: the earlier entry wins)."""
    s = sum(ratios)
    quotas = [r / s * total for r in ratios]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(ratios)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


class MixtureSampler:
    """Fixed-length training sequences for a budget of `total_sequences`, in a seeded order."""

    def __init__(
        self,
        stores: Mapping[str, TokenStore],
        components: Sequence[MixComponent | Mapping[str, Any]],
        seq_len: int,
        total_sequences: int,
        seed: int,
    ):
        if seq_len < 1 or total_sequences < 0:
            raise MidtrainError(
                f"seq_len {seq_len} / total_sequences {total_sequences}: need seq_len >= 1, "
                "total_sequences >= 0"
            )
        self.components = validate_mix(components, set(stores))
        self.stores = {c.source: stores[c.source] for c in self.components}
        self.seq_len, self.total_sequences, self.seed = seq_len, total_sequences, seed
        _check_compatible(self.components, self.stores)
        self.counts = allocate([c.ratio for c in self.components], total_sequences)
        self.n_windows = [self.stores[c.source].windows(seq_len) for c in self.components]
        self._check_sizes()
        self._order = self._interleave()
        self._grids = [self._grid(c.source) for c in self.components]
        self._perms: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    # -- planning ---------------------------------------------------------------------------------

    def plan(self) -> list[MixRow]:
        """One row per source: requested vs available tokens and the planned epochs."""
        return [
            MixRow(
                c.source,
                c.ratio,
                n,
                n * self.seq_len,
                w * self.seq_len,
                n / w if w else 0.0,
                c.max_repetition,
            )  # fmt: skip
            for c, n, w in zip(self.components, self.counts, self.n_windows, strict=True)
        ]

    def token_table(self) -> Table:
        table = Table(
            title=f"mix: {self.total_sequences:,} x {self.seq_len} tokens, seed {self.seed}"
        )
        for col in ("source", "ratio", "sequences", "requested", "available", "epochs", "cap"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for r in self.plan():
            table.add_row(
                escape(r.source),
                f"{r.ratio:.4g}",
                f"{r.sequences:,}",
                f"{r.tokens_requested:,}",
                f"{r.tokens_available:,}",
                f"{r.epochs:.3f}",
                f"{r.max_repetition:g}",
            )
        return table

    def fingerprint(self) -> str:
        return hash_obj(
            {
                "algorithm": "midtrain-mix/1",
                "mix": [c.model_dump() for c in self.components],
                "seq_len": self.seq_len,
                "total_sequences": self.total_sequences,
                "seed": self.seed,
                "stores": {name: s.content_hash for name, s in self.stores.items()},
            }
        )

    # -- sampling ---------------------------------------------------------------------------------

    def sequences(self, start: int, count: int) -> np.ndarray:
        """Sequences `start .. start + count - 1` of the run, int64 of shape (count, seq_len)."""
        if start < 0 or count < 0 or start + count > self.total_sequences:
            raise ValueError(
                f"sequences({start}, {count}) is outside the budget of {self.total_sequences}"
            )
        out = np.empty((count, self.seq_len), dtype=np.int64)
        glob = self._order[start : start + count]
        src = np.searchsorted(self._offsets, glob, side="right") - 1
        for s in np.unique(src):
            rows = np.flatnonzero(src == s)
            k = glob[rows] - self._offsets[s]
            out[rows] = self._grids[s][self._windows(int(s), k)]
        return out

    # -- internals --------------------------------------------------------------------------------

    def _check_sizes(self) -> None:
        for i, (c, n, w) in enumerate(
            zip(self.components, self.counts, self.n_windows, strict=True)
        ):
            if n == 0:
                continue
            if w == 0:
                raise MidtrainError(
                    f"mix[{i}].source: store {c.source!r} has {self.stores[c.source].n_train_tokens} "
                    f"training tokens, less than one sequence of {self.seq_len}; "
                    "add data or drop it from the mix"
                )
            if n > math.floor(c.max_repetition * w + 1e-9):
                raise MidtrainError(
                    f"mix[{i}].max_repetition: source {c.source!r} needs {n * self.seq_len:,} "
                    f"tokens ({n / w:.3f} epochs of its {w * self.seq_len:,}) but max_repetition is "
                    f"{c.max_repetition:g}; raise it to >= {math.ceil(n / w * 1000) / 1000:g}, "
                    "lower its ratio, or add data"
                )

    def _interleave(self) -> np.ndarray:
        """Global sequence ids (source offset + k) in run order; keys (k + u) / n_s, sorted."""
        self._offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        keys = np.empty(self.total_sequences, dtype=np.float64)
        for i, n in enumerate(self.counts):
            rng = np.random.default_rng([self.seed, 0x4D4958, _name_key(self.components[i].source)])
            a = int(self._offsets[i])
            keys[a : a + n] = (np.arange(n) + rng.random(n)) / max(n, 1)
        return np.argsort(keys, kind="stable").astype(np.int64)

    def _grid(self, source: str) -> np.ndarray:
        """The source's memmap viewed as (windows, seq_len): a view, no copy."""
        toks = self.stores[source].train_tokens()
        w = len(toks) // self.seq_len
        return toks[: w * self.seq_len].reshape(w, self.seq_len)

    def _windows(self, s: int, k: np.ndarray) -> np.ndarray:
        """Window index of the k-th sequences of source s (seeded permutation per epoch)."""
        w = self.n_windows[s]
        epoch, j = np.divmod(k, w)
        out = np.empty_like(k)
        for e in np.unique(epoch):
            sel = epoch == e
            out[sel] = self._perm(s, int(e))[j[sel]]
        return out

    def _perm(self, s: int, epoch: int) -> np.ndarray:
        key = (s, epoch)
        if key not in self._perms:
            name = _name_key(self.components[s].source)
            rng = np.random.default_rng([self.seed, 0x57494E, name, epoch])
            w = self.n_windows[s]
            self._perms[key] = rng.permutation(w).astype(np.int32 if w < 2**31 else np.int64)
            if len(self._perms) > _PERM_CACHE:
                self._perms.popitem(last=False)
        self._perms.move_to_end(key)
        return self._perms[key]


def _name_key(source: str) -> int:
    """A stable integer per source name: the order does not depend on the list's order."""
    return int(hashlib.sha256(source.encode("utf-8")).hexdigest()[:15], 16)


def _check_compatible(components: list[MixComponent], stores: Mapping[str, TokenStore]) -> None:
    """All sources of one mix must share a tokenizer (same ids, same EOS)."""
    first = components[0].source
    ref = stores[first]
    for i, c in enumerate(components[1:], start=1):
        s = stores[c.source]
        if s.tokenizer_hash != ref.tokenizer_hash or s.eos_id != ref.eos_id:
            raise MidtrainError(
                f"mix[{i}].source: store {c.source!r} was tokenised with another tokenizer than "
                f"{first!r}; prepare both with the same --tokenizer"
            )
