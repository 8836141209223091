"""`midtrain bench prepare`: `data prepare` tokens/s ÷ the tokenizer's own `encode_batch`.

The documents are the demo world's five sources in one JSON-lines file (~12 MB at scale 1), the
tokenizer a byte-level BPE of 8192 ids trained on the first of them. In one process, after a
warm-up round of each side, `rounds` rounds of:

- ours: `prepare_source` of the file into a new store, end to end (the validating pass, reading
  and parsing the JSON again, encoding, held-out split, writing and hashing), as `data prepare`
  runs it (its encoding threads; `TOKENIZERS_PARALLELISM` as midtrain sets it, false);
- the reference: the same documents, already in memory, through
  `tokenizer.backend_tokenizer.encode_batch(batch, add_special_tokens=False)` in batches of
  `REF_BATCH` with the tokenizer's own parallelism on (`TOKENIZERS_PARALLELISM=true`: every
  core), its default; and `encode_batch_fast` (no offsets) likewise, the stricter reference.

Tokens are the ids the documents encode to (ours: the store's ids less the EOS it adds after
each document); both sides must count the same, or the benchmark fails. Peak RSS of `data
prepare` alone is measured in subprocesses on the file and on `copies` concatenated copies of it
(memory should not grow with the input), next to a subprocess that only imports and loads the
tokenizer; each also reports how far the peak rose above its RSS when preparing began.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

from midtrain.errors import MidtrainError
from midtrain.io import library_versions

TARGET = 0.9
VOCAB = 8192
REF_BATCH = 1024
RSS_FLAT = 1.1  # peak RSS at `copies` x the input within 10% of 1x


class PrepareBenchConfig(TypedDict):
    world_scale: float
    vocab_size: int
    rounds: int
    warmup_rounds: int
    reference_batch: int
    encode_threads: int
    cpus: int | None


class PrepareBenchReport(TypedDict):
    """The `bench prepare --json` report (`run_bench`)."""

    benchmark: str
    ratio: float
    ratio_vs_encode_batch_fast: float
    meets_target: bool
    target: float
    tokens_per_s: dict[str, int]
    tokens: dict[str, int]
    documents: int
    input_bytes: dict[str, int]
    peak_rss_mib: dict[str, float] | None
    prepare_rss_growth_mib: dict[str, float] | None
    rss_growth: float | None
    rss_flat: bool | None
    rounds: dict[str, list[int]]
    config: PrepareBenchConfig
    versions: dict[str, str]


def build_inputs(root: Path, scale: float = 1.0, copies: int = 4) -> dict[str, Path]:
    """The world's sources as ROOT/x1.jsonl and `copies` of it as ROOT/xN.jsonl; a BPE of
    `VOCAB` ids trained on the first 20,000 documents in ROOT/tokenizer."""
    from midtrain.data import readers
    from midtrain.data.tokenizer import train_tokenizer
    from midtrain.demo.world import generate_world

    world = generate_world(root / "world", scale=scale)
    one = b"".join(Path(p).read_bytes() for _, p in sorted(world["source_paths"].items()))
    (root / "x1.jsonl").write_bytes(one)
    with open(root / "xN.jsonl", "wb") as f:
        for _ in range(copies):
            f.write(one)
    shutil.rmtree(root / "world")
    docs = readers.iter_texts(readers.resolve_inputs([root / "x1.jsonl"]), "text")
    train_tokenizer(itertools.islice(docs, 20_000), VOCAB, root / "tokenizer")
    return {"x1": root / "x1.jsonl", "xN": root / "xN.jsonl", "tokenizer": root / "tokenizer"}


def _ours(tok: Any, src: Path, out: Path) -> tuple[float, int]:
    from midtrain.data.prepare import prepare_source

    t0 = time.perf_counter()
    st = prepare_source("bench", [src], out, tok, progress=False)
    seconds = time.perf_counter() - t0
    man = st.manifest
    tokens = man["train"]["n_tokens"] - man["train"]["n_docs"] + man["heldout"]["n_tokens"]
    shutil.rmtree(out)
    return seconds, tokens


@contextlib.contextmanager
def _parallelism(value: str) -> Iterator[None]:
    """TOKENIZERS_PARALLELISM=value inside (the tokenizers library reads it at every call)."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _reference(tok: Any, docs: list[str], method: str) -> tuple[float, int]:
    encode = getattr(tok.backend_tokenizer, method)
    tokens = 0
    with _parallelism("true"):
        t0 = time.perf_counter()
        for a in range(0, len(docs), REF_BATCH):
            tokens += sum(
                len(e.ids) for e in encode(docs[a : a + REF_BATCH], add_special_tokens=False)
            )
        seconds = time.perf_counter() - t0
    return seconds, tokens


RSS_CODE = """
import resource, sys
from pathlib import Path
from midtrain import env
env.setup()
from midtrain.data.prepare import prepare_source
from midtrain.data.tokenizer import load_tokenizer
tok = load_tokenizer(sys.argv[1])
status = Path("/proc/self/status")
def kib(key):
    line = next(x for x in status.read_text().splitlines() if x.startswith(key))
    return int(line.split()[1])
start = kib("VmRSS:")
Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from here
if len(sys.argv) > 2:
    prepare_source("bench", [sys.argv[2]], sys.argv[3], tok, progress=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, (kib("VmHWM:") - start) / 1024)
"""


def peak_rss_mib(tokenizer: Path, src: Path | None, out: Path) -> tuple[float, float]:
    """A fresh process that loads the tokenizer and prepares `src` (None: only the imports and
    the tokenizer): its peak RSS (MiB), and the peak while preparing over the RSS before (Linux:
    /proc/self/clear_refs restarts the peak)."""
    args = [str(tokenizer)] + ([str(src), str(out)] if src else [])
    proc = subprocess.run([sys.executable, "-c", RSS_CODE, *args], capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise MidtrainError(f"bench prepare: the RSS subprocess failed: {proc.stderr[-400:]}")
    peak, grew = map(float, proc.stdout.strip().splitlines()[-1].split())
    return round(peak, 1), round(grew, 1)


def run_bench(
    scale: float = 1.0, rounds: int = 3, copies: int = 4, rss: bool = True,
    workdir: str | Path | None = None,
) -> PrepareBenchReport:  # fmt: skip
    """Build the inputs, warm up, time `rounds` rounds of each side, then measure peak RSS."""
    from midtrain import env
    from midtrain.data import readers
    from midtrain.data.tokenizer import load_tokenizer

    env.setup()
    rows: dict[str, list[float]] = {"ours": [], "encode_batch": [], "encode_batch_fast": []}
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-prepare-", dir=workdir) as tmp:
        paths = build_inputs(Path(tmp), scale, copies)
        tok = load_tokenizer(paths["tokenizer"])
        docs = list(readers.iter_texts(readers.resolve_inputs([paths["x1"]]), "text"))
        for r in range(rounds + 1):  # round 0 is the warm-up
            timed = {
                "ours": _ours(tok, paths["x1"], Path(tmp) / "store"),
                "encode_batch": _reference(tok, docs, "encode_batch"),
                "encode_batch_fast": _reference(tok, docs, "encode_batch_fast"),
            }
            tokens = {k: n for k, (_, n) in timed.items()}
            if len(set(tokens.values())) != 1:
                raise MidtrainError(f"bench prepare: the sides counted different tokens {tokens}")
            if r:
                for k, (s, n) in timed.items():
                    rows[k].append(n / s)
        mem = _rss(paths, Path(tmp) / "rss", copies) if rss else None
        sizes = {"x1": paths["x1"].stat().st_size, f"x{copies}": paths["xN"].stat().st_size}
    rates = {k: statistics.median(v) for k, v in rows.items()}
    return _result(rates, rows, mem, tokens, len(docs), sizes, scale, rounds)


def _rss(paths: dict[str, Path], out: Path, copies: int) -> dict[str, dict[str, float]]:
    runs = {
        "imports_and_tokenizer": peak_rss_mib(paths["tokenizer"], None, out),
        "x1": peak_rss_mib(paths["tokenizer"], paths["x1"], out),
        f"x{copies}": peak_rss_mib(paths["tokenizer"], paths["xN"], out),
    }
    return {
        "peak_rss_mib": {k: peak for k, (peak, _) in runs.items()},
        "prepare_rss_growth_mib": {k: grew for k, (_, grew) in runs.items()},
    }


def _result(rates: dict[str, float], rows: dict[str, list[float]], mem: dict[str, dict[str, float]] | None,
            tokens: dict[str, int], n_docs: int, sizes: dict[str, int], scale: float, rounds: int
            ) -> PrepareBenchReport:  # fmt: skip
    from midtrain.data.encode import encode_threads

    ratio = rates["ours"] / rates["encode_batch"]
    growth = None
    if mem is not None:
        peak = mem["peak_rss_mib"]
        big = next(k for k in peak if k not in ("x1", "imports_and_tokenizer"))
        growth = round(peak[big] / peak["x1"], 3)
    return {
        "benchmark": "prepare",
        "ratio": round(ratio, 3),
        "ratio_vs_encode_batch_fast": round(rates["ours"] / rates["encode_batch_fast"], 3),
        "meets_target": ratio >= TARGET,
        "target": TARGET,
        "tokens_per_s": {k: round(v) for k, v in rates.items()},
        "tokens": tokens,  # per side, the last round's
        "documents": n_docs,
        "input_bytes": sizes,
        "peak_rss_mib": mem and mem["peak_rss_mib"],  # of the whole process
        "prepare_rss_growth_mib": mem and mem["prepare_rss_growth_mib"],  # peak over the start
        "rss_growth": growth,
        "rss_flat": None if growth is None else growth <= RSS_FLAT,
        "rounds": {k: [round(v) for v in vs] for k, vs in rows.items()},
        "config": {"world_scale": scale, "vocab_size": VOCAB, "rounds": rounds,
                   "warmup_rounds": 1, "reference_batch": REF_BATCH,
                   "encode_threads": encode_threads(), "cpus": os.cpu_count()},
        "versions": library_versions(),
    }  # fmt: skip
