"""`midtrain bench mix`: mixer throughput on a generated multi-source mix of memmapped stores.

Random ids are written straight into stores (no tokenising), then one full pass over the budget is
read in trainer-sized batches. The stores were just written, so they are in the page cache: this
measures the sampler (interleaving, window lookup, gather, int64 cast), not the disk.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TypedDict

import numpy as np

from midtrain.data.prepare import write_store
from midtrain.data.store import TokenStore
from midtrain.io import library_versions
from midtrain.mix import MixComponent, MixtureSampler

# ~8-13.5k tok/s: the trainer on this CPU (shared STACK-NOTES), x1000 = "never a bottleneck"
TRAINER_TOKENS_PER_S = 13_500
TARGET_FACTOR = 1000
RATIOS = {"web": 0.5, "hq": 0.2, "flan": 0.15, "math": 0.1, "code": 0.05}


class MixConfig(TypedDict):
    sources: dict[str, float]
    tokens: int
    seq_len: int
    batch: int
    seed: int
    dtype: str
    trainer_tokens_per_s_reference: int
    target_factor: int


class MixReport(TypedDict):
    """The `bench mix --json` report (`run_bench`)."""

    benchmark: str
    mixer_tokens_per_s: int
    sequences_per_s: int
    tokens_read: int
    seconds: float
    init_seconds: float
    generate_seconds: float
    data_tokens: int
    target_tokens_per_s: int
    meets_target: bool
    checksum: int
    config: MixConfig
    versions: dict[str, str]


CHUNK = 1 << 23


def _chunks(n_tokens: int, vocab: int, eos: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Random ids with an EOS about every 1000 tokens (documents of varied length)."""
    for a in range(0, n_tokens, CHUNK):
        ids = rng.integers(1, vocab, size=min(CHUNK, n_tokens - a), dtype=np.uint16)
        ids[rng.random(len(ids)) < 1e-3] = eos
        yield ids


def generate_stores(
    root: Path, tokens: int, seq_len: int, vocab: int = 32_000, seed: int = 0
) -> dict[str, TokenStore]:
    """One store per source, sized to its ratio of `tokens` plus a few spare windows."""
    rng = np.random.default_rng(seed)
    return {
        name: write_store(
            root / name,
            name,
            _chunks(int(r * tokens) + 4 * seq_len, vocab, 0, rng),
            vocab_size=vocab,
            eos_id=0,
            tokenizer_hash="bench",
        )
        for name, r in RATIOS.items()
    }


def run_bench(
    tokens: int = 100_000_000,
    seq_len: int = 2048,
    batch: int = 16,
    seed: int = 0,
    workdir: str | Path | None = None,
) -> MixReport:
    """Generate the stores, build the sampler, read every sequence of the budget once."""
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-mix-", dir=workdir) as tmp:
        t0 = time.perf_counter()
        stores = generate_stores(Path(tmp), tokens, seq_len, seed=seed)
        t_gen = time.perf_counter() - t0
        mix = [MixComponent(source=s, ratio=r) for s, r in RATIOS.items()]
        total = tokens // seq_len
        t0 = time.perf_counter()
        sampler = MixtureSampler(stores, mix, seq_len, total, seed)
        t_init = time.perf_counter() - t0
        checksum = 0
        t0 = time.perf_counter()
        for start in range(0, total, batch):
            x = sampler.sequences(start, min(batch, total - start))
            checksum ^= int(x[:, 0].sum())  # keep the read from being optimised away
        seconds = time.perf_counter() - t0
        data_tokens = sum(s.n_train_tokens for s in stores.values())
    read = total * seq_len
    rate = read / seconds
    target = TRAINER_TOKENS_PER_S * TARGET_FACTOR
    return {
        "benchmark": "mix",
        "mixer_tokens_per_s": round(rate),
        "sequences_per_s": round(total / seconds),
        "tokens_read": read,
        "seconds": round(seconds, 4),
        "init_seconds": round(t_init, 4),
        "generate_seconds": round(t_gen, 2),
        "data_tokens": data_tokens,
        "target_tokens_per_s": target,
        "meets_target": rate >= target,
        "checksum": checksum,
        "config": {
            "sources": RATIOS,
            "tokens": tokens,
            "seq_len": seq_len,
            "batch": batch,
            "seed": seed,
            "dtype": "uint16",
            "trainer_tokens_per_s_reference": TRAINER_TOKENS_PER_S,
            "target_factor": TARGET_FACTOR,
        },
        "versions": library_versions(),
    }
