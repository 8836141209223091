"""Encoding a stream of documents for `data prepare`: batches encoded on threads, in order.

The tokenizers library releases the GIL while it encodes a batch, so a few threads encode batches
in parallel while the caller's thread reads the next documents and writes the ids of the previous
ones: reading, encoding and writing overlap, and the batches come back in input order, so the
store is the same byte for byte whatever the number of threads. At most `AHEAD` batches per thread
are read ahead of the writer (memory stays flat in the source's size). Python threads rather than
the tokenizer's own pool (`TOKENIZERS_PARALLELISM`, off in midtrain: a process forked after the
pool started would deadlock) also overlap a batch's encoding with the Python work around it.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

MAX_THREADS = 8
AHEAD = 2  # batches in flight per thread

Encode = Callable[[Any, Sequence[str]], list[np.ndarray]]


def encode_threads() -> int:
    """Threads that encode: the CPUs this process may run on, at most `MAX_THREADS`."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(MAX_THREADS, n))


def batches(texts: Iterable[str], max_docs: int, max_chars: int) -> Iterator[list[str]]:
    """Groups of documents for one encode call, bounded in count and characters (streaming)."""
    batch: list[str] = []
    chars = 0
    for t in texts:
        batch.append(t)
        chars += len(t)
        if len(batch) >= max_docs or chars >= max_chars:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def encoded(
    tok: Any, groups: Iterable[list[str]], encode: Encode, threads: int | None = None
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """(texts, ids per document) of every group, in input order, encoded on `threads` threads
    (default `encode_threads()`) with at most `AHEAD` groups per thread read ahead."""
    threads = threads or encode_threads()
    if threads == 1:
        for texts in groups:
            yield texts, encode(tok, texts)
        return
    pending: deque[tuple[list[str], Future[list[np.ndarray]]]] = deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="midtrain-encode") as pool:
        try:
            for texts in groups:
                pending.append((texts, pool.submit(encode, tok, texts)))
                if len(pending) >= AHEAD * threads:
                    texts0, done = pending.popleft()
                    yield texts0, done.result()
            while pending:
                texts0, done = pending.popleft()
                yield texts0, done.result()
        finally:
            for _, f in pending:  # the consumer stopped early: drop what was not started
                f.cancel()
