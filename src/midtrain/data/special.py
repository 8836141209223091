"""The tokenizer's special tokens in a token store: from its manifest's record, else from its ids.

`data prepare` counts the tokenizer's special tokens written as text in a source (the tokenizer
reads them as their special ids) and records the counts in manifest.json as `special_text` (`{}`
when there are none). A store without that record (an OLMo `.npy` token file, a store written by
`write_store`, one prepared before the record was kept) is scanned instead: its training ids,
memory-mapped and read in chunks, against the ids of the tokenizer's special tokens other than
EOS. EOS ends every document, so an EOS written as text cannot be told from a document end there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SCAN_CHUNK = 1 << 24  # ids per chunk of the scan (16M ids: 32-64 MB of memory map)
MANIFEST = "counted in its manifest's special_text"
SCAN = "found by a scan of its token ids"


@dataclass(frozen=True)
class SpecialCounts:
    """How often each special token is in a store, and how that was found (MANIFEST or SCAN)."""

    counts: dict[str, int]
    how: str

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def text(self) -> str:
        """`'<|im_start|>' x3, '<|im_end|>' x1 (found by a scan of its token ids)`: most frequent
        first."""
        found = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return ", ".join(f"{t!r} x{n:,}" for t, n in found if n) + f" ({self.how})"


def special_ids(tok: Any, eos_id: int) -> dict[int, str]:
    """{id: token} of the special tokens `tok` reads from text, EOS left out (a document end)."""
    from midtrain.data.tokenizer import special_strings

    core = tok.backend_tokenizer
    ids = {core.token_to_id(t): t for t in special_strings(tok)}
    return {i: t for i, t in ids.items() if i is not None and i != eos_id}


def count_ids(ids: np.ndarray, wanted: Mapping[int, str], vocab_size: int) -> dict[str, int]:
    """{token: count} of the `wanted` ids in `ids` (tokens never seen left out), chunk by chunk:
    one lookup per id in a table of the vocabulary, no copy of the whole array."""
    if not wanted or not len(ids):
        return {}
    table = np.zeros(max(vocab_size, max(wanted) + 1), dtype=bool)
    table[list(wanted)] = True
    found: dict[str, int] = {}
    for lo in range(0, len(ids), SCAN_CHUNK):
        chunk = np.asarray(ids[lo : lo + SCAN_CHUNK])
        hits = chunk[table[chunk]]
        for i, n in zip(*np.unique(hits, return_counts=True), strict=True):
            found[wanted[int(i)]] = found.get(wanted[int(i)], 0) + int(n)
    return found


def store_special_counts(store: Any, tok: Any | None) -> SpecialCounts | None:
    """The special tokens in `store` (a `TokenStore`): its manifest's record when it has one, else
    a scan of its training ids with `tok`, the tokenizer it was prepared with (None without
    `tok`: the scan needs the tokenizer's special ids)."""
    record = store.manifest.get("special_text")
    if record is not None:
        return SpecialCounts({t: int(n) for t, n in record.items()}, MANIFEST)
    if tok is None:
        return None
    wanted = special_ids(tok, store.eos_id)
    return SpecialCounts(count_ids(store.train_tokens(), wanted, store.vocab_size), SCAN)
