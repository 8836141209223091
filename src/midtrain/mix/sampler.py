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

**Paired streams (common random numbers).** Given `pair_base` (the control's mix), a run shares its
control's stream step for step: the control's layout is computed as above; each base source keeps
the control's sequences (same window, same position) at `min(m_s, n_s)` of its `n_s` slots, the
slots it gives up chosen evenly spaced (a seeded stratified pattern, the same for every arm of one
fraction); the freed positions take the run's other sequences (its candidate sources, or a base
source's extra windows when the run has more of it than the control), interleaved by keys as in 2.
Counts per source are the run's own largest-remainder allocation, so ratios stay exact. An arm and
its control then differ only where the candidate's tokens replace base tokens.
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
        pair_base: Mapping[str, float] | None = None,
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
        self.pair_base = dict(sorted(pair_base.items())) if pair_base else None
        names = [c.source for c in self.components]
        if self.pair_base is None:
            self._src, self._rank = _interleave(names, self.counts, seed, _KEY_TAG)
        else:
            self._src, self._rank = self._paired_layout(names)
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
        spec = {
            "algorithm": "midtrain-mix/1",
            "mix": [c.model_dump() for c in self.components],
            "seq_len": self.seq_len,
            "total_sequences": self.total_sequences,
            "seed": self.seed,
            "stores": {name: s.content_hash for name, s in self.stores.items()},
        }
        if self.pair_base is not None:
            spec |= {"algorithm": "midtrain-mix/2-paired", "pair_base": self.pair_base}
        return hash_obj(spec)

    def sources_at(self, start: int, count: int) -> list[str]:
        """The source of each of sequences `start .. start + count - 1` (tests, tables)."""
        names = [c.source for c in self.components]
        return [names[i] for i in self._src[start : start + count]]

    # -- sampling ---------------------------------------------------------------------------------

    def sequences(self, start: int, count: int) -> np.ndarray:
        """Sequences `start .. start + count - 1` of the run, int64 of shape (count, seq_len)."""
        if start < 0 or count < 0 or start + count > self.total_sequences:
            raise ValueError(
                f"sequences({start}, {count}) is outside the budget of {self.total_sequences}"
            )
        out = np.empty((count, self.seq_len), dtype=np.int64)
        src, rank = self._src[start : start + count], self._rank[start : start + count]
        for s in np.unique(src):
            rows = np.flatnonzero(src == s)
            out[rows] = self._grids[s][self._windows(int(s), rank[rows])]
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

    def _paired_layout(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(source index, rank) per position: the control's stream (the layout of `pair_base`
        with this seed) with the run's own sequences where base sequences give way."""
        base = list(self.pair_base)
        n_base = allocate(list(self.pair_base.values()), self.total_sequences)
        ctrl_src, ctrl_rank = _interleave(base, n_base, self.seed, _KEY_TAG)
        src = np.full(self.total_sequences, -1, dtype=np.int64)
        rank = ctrl_rank.copy()
        kept = [0] * len(names)
        for b, (name, n_b) in enumerate(zip(base, n_base, strict=True)):
            i = names.index(name) if name in names else None
            keep = min(self.counts[i], n_b) if i is not None else 0
            if i is None or keep == 0:
                continue
            self._check_paired_cap(i, n_b)
            at = np.flatnonzero(ctrl_src == b)  # this source's slots, in rank order
            dropped = _spread(n_b, n_b - keep, self.seed, name)
            mask = np.ones(n_b, dtype=bool)
            mask[dropped] = False
            src[at[mask]] = i
            kept[i] = keep
        free = np.flatnonzero(src < 0)
        extra = [n - k for n, k in zip(self.counts, kept, strict=True)]
        f_src, f_rank = _interleave(names, extra, self.seed, _EXTRA_TAG)
        src[free], rank[free] = f_src, f_rank + np.asarray(kept, dtype=np.int64)[f_src]
        return src, rank

    def _check_paired_cap(self, i: int, n_control: int) -> None:
        c, w = self.components[i], self.n_windows[i]
        if n_control > math.floor(c.max_repetition * w + 1e-9):
            raise MidtrainError(
                f"pair_base: the paired control draws {n_control * self.seq_len:,} tokens of "
                f"{c.source!r} ({n_control / w:.3f} epochs), more than mix max_repetition "
                f"{c.max_repetition:g} allows; raise it or pair with another base mix"
            )

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


_KEY_TAG, _EXTRA_TAG, _SPREAD_TAG = 0x4D4958, 0x455854, 0x535052


def _interleave(
    names: Sequence[str], counts: Sequence[int], seed: int, tag: int
) -> tuple[np.ndarray, np.ndarray]:
    """(source index, rank) in run order: the k-th sequence of source i has the key
    (k + u) / n_i with u a seeded uniform draw; positions are the keys in sorted order."""
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    keys = np.empty(int(offsets[-1]), dtype=np.float64)
    for i, n in enumerate(counts):
        rng = np.random.default_rng([seed, tag, _name_key(names[i])])
        keys[offsets[i] : offsets[i + 1]] = (np.arange(n) + rng.random(n)) / max(n, 1)
    order = np.argsort(keys, kind="stable").astype(np.int64)
    src = np.searchsorted(offsets, order, side="right") - 1
    return src, order - offsets[src]


def _spread(n: int, d: int, seed: int, source: str) -> np.ndarray:
    """`d` of `n` slots, evenly spaced with a seeded offset: floor((j + w) n / d)."""
    if d <= 0:
        return np.empty(0, dtype=np.int64)
    w = np.random.default_rng([seed, _SPREAD_TAG, _name_key(source)]).random()
    return np.floor((np.arange(d) + w) * (n / d)).astype(np.int64)


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
