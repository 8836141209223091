"""Megatron indexed datasets (`PREFIX.bin` + `PREFIX.idx`) as token stores, without re-tokenising.

The `.idx` layout is megatron-core's `MMIDIDX` version 1 (`_IndexWriter` in
`megatron/core/datasets/indexed_dataset.py`): the 9-byte magic `MMIDIDX\\x00\\x00`, version
(<Q, 1), dtype code (<B), sequence count (<Q), document-index length (<Q, documents + 1), then
int32 sequence sizes, int64 byte pointers into `.bin`, int64 document index (document i is
sequences doc_idx[i]..doc_idx[i+1]), and for multimodal files one int8 mode per sequence (ignored
here). The `.bin` is the ids, back to back.

As for OLMo `.npy` files (`data/npy.py`), the final documents are held out and the training part
is read in place from the `.bin` (the manifest points at it) when every training document already
ends with EOS (`preprocess_data.py --append-eod`); otherwise the training ids are copied to
train.bin with EOS appended to each document (still no re-tokenising). Ids must lie below the
`--tokenizer`'s vocabulary; uint16, int16 and int32 files are read as the store's uint16/uint32
(same bytes for ids >= 0; a negative id reads as a huge one and fails that check). docs/external.md.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.data.store import DTYPES, TokenStore, heldout_count, npy_train_sha
from midtrain.data.tokenizer import decode_docs, vocab_size
from midtrain.data.writer import (
    PrepareOptions,
    StoreWriter,
    base_manifest,
    empty_source_error,
    prepare_progress,
)
from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, hash_file, hash_obj

MAGIC = b"MMIDIDX\x00\x00"
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, sequences, doc_idx length: 34 bytes
# megatron.core.datasets.indexed_dataset.DType codes
CODES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64", 7: "float32",
         8: "uint16"}  # fmt: skip
AS_STORE = {"uint16": "uint16", "int16": "uint16", "int32": "uint32"}  # same bytes for ids >= 0
SCAN_CHUNK_TOKENS = 16 << 20
FIX = "pass the .bin/.idx pair written together by Megatron's preprocess_data.py"


@dataclass(frozen=True)
class MegatronIndex:
    """A checked `.idx` with its `.bin`: token offsets of every document."""

    idx: Path
    bin: Path
    dtype: str  # the file's own dtype (megatron's DType name)
    bounds: np.ndarray  # int64, n_docs + 1: document i is ids[bounds[i] : bounds[i + 1]]

    @property
    def n_docs(self) -> int:
        return len(self.bounds) - 1

    @property
    def n_tokens(self) -> int:
        return int(self.bounds[-1])

    def ids(self) -> np.ndarray:
        """The `.bin` as the store's dtype, memory-mapped."""
        dt = DTYPES[AS_STORE[self.dtype]]
        if self.n_tokens == 0:
            return np.empty(0, dtype=dt)
        return np.memmap(self.bin, dtype=dt, mode="r", shape=(self.n_tokens,))


def pair_paths(path: Path) -> tuple[Path, Path]:
    """(PREFIX.idx, PREFIX.bin) from either file of the pair or the prefix itself."""
    prefix = path.with_suffix("") if path.suffix in (".idx", ".bin") else path
    idx, bin_ = prefix.with_name(prefix.name + ".idx"), prefix.with_name(prefix.name + ".bin")
    for p in (idx, bin_):
        if not p.is_file():
            raise MidtrainError(
                f"{p}: missing (the Megatron dataset {prefix} needs both {idx.name} and "
                f"{bin_.name}); {FIX}"
            )
    return idx, bin_


def read_index(path: Path) -> MegatronIndex:
    """Read and check `PREFIX.idx` against `PREFIX.bin`: magic, version, dtype, the file's size,
    the document index, contiguous pointers, and the `.bin`'s length."""
    idx, bin_ = pair_paths(path)
    size = idx.stat().st_size
    with open(idx, "rb") as f:
        head = f.read(HEADER.size)
    if len(head) < HEADER.size or not head.startswith(MAGIC):
        raise MidtrainError(
            f"{idx}: not a Megatron index (starts {head[:9]!r}, not {MAGIC!r}); {FIX}"
        )
    _, version, code, n_seq, n_doc_idx = HEADER.unpack(head)
    if version != 1:
        raise MidtrainError(f"{idx}: index version {version}, only 1 is known; {FIX}")
    if code not in CODES:
        raise MidtrainError(f"{idx}: unknown dtype code {code}; {FIX}")
    dtype = CODES[code]
    if dtype not in AS_STORE:
        raise MidtrainError(
            f"{idx}: ids are {dtype}; a store reads uint16, int16 or int32 ids in place: write "
            "the dataset again with one of those (Megatron's default for the vocabulary)"
        )
    body = n_seq * (4 + 8) + n_doc_idx * 8
    if size not in (HEADER.size + body, HEADER.size + body + n_seq):
        raise MidtrainError(
            f"{idx}: {size} bytes, but its header promises {n_seq} sequences and {n_doc_idx} "
            f"document-index entries ({HEADER.size + body} bytes); the file is truncated or "
            f"corrupt: {FIX}"
        )
    mm = np.memmap(idx, dtype=np.uint8, mode="r")
    sizes = np.frombuffer(mm, np.int32, n_seq, HEADER.size)
    pointers = np.frombuffer(mm, np.int64, n_seq, HEADER.size + 4 * n_seq)
    doc_idx = np.frombuffer(mm, np.int64, n_doc_idx, HEADER.size + 12 * n_seq)
    starts = np.zeros(n_seq + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    itemsize = np.dtype(dtype).itemsize
    if n_doc_idx < 2 or doc_idx[0] != 0 or doc_idx[-1] != n_seq or np.any(np.diff(doc_idx) < 0):
        raise MidtrainError(
            f"{idx}: the document index does not run from 0 to its {n_seq} sequences in order "
            f"(or holds no document); {FIX}"
        )
    if np.any(sizes < 0) or not np.array_equal(pointers, starts[:-1] * itemsize):
        raise MidtrainError(
            f"{idx}: sequence pointers are not the running sum of the sizes (a .bin with gaps or "
            f"reordered sequences); {FIX}"
        )
    want = int(starts[-1]) * itemsize
    if (got := bin_.stat().st_size) != want:
        raise MidtrainError(
            f"{bin_}: {got} bytes, but {idx.name} says {int(starts[-1])} {dtype} ids "
            f"({want} bytes): the index belongs to another .bin or one of them is truncated; {FIX}"
        )
    return MegatronIndex(idx, bin_, dtype, starts[doc_idx])


def _scan(ix: MegatronIndex, ids: np.ndarray, n_vocab: int, tok: Any, bar: Any) -> str:
    """Every id below the vocabulary (one streaming pass); returns the .bin's sha256."""
    task = bar.add_task(f"scanning {ix.bin.name}", total=len(ids))
    h = hashlib.sha256()
    with open(ix.bin, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    for i in range(0, len(ids), SCAN_CHUNK_TOKENS):
        chunk = np.asarray(ids[i : i + SCAN_CHUNK_TOKENS])
        if (top := int(chunk.max())) >= n_vocab:
            at = i + int(np.argmax(chunk >= n_vocab))
            shown = top if ix.dtype.startswith("u") or top < 1 << 31 else "negative"
            where = getattr(tok, "name_or_path", "")
            raise MidtrainError(
                f"{ix.bin}: token id {shown} at position {at} is beyond the vocabulary of "
                f"--tokenizer {where} ({n_vocab} ids); pass the tokenizer the dataset was made with"
            )
        bar.advance(task, len(chunk))
    return h.hexdigest()


def megatron_input_hash(ix: MegatronIndex, bin_sha256: str) -> str:
    """The `input_hash` of a store made from one Megatron dataset (its name and both files)."""
    name = ix.idx.with_suffix("").name
    files = {"bin": bin_sha256, "idx": hash_file(ix.idx)}
    return hash_obj({"inputs": [{"kind": "megatron", "name": name, "sha256": files}]})


def prepare_megatron(
    name: str, path: Path, out: Path, tok: Any, opts: PrepareOptions
) -> TokenStore:
    ix = read_index(path.resolve())
    n_vocab, eos = vocab_size(tok), tok.eos_token_id
    dt = DTYPES[AS_STORE[ix.dtype]]
    if n_vocab > np.iinfo(dt).max + 1:
        raise MidtrainError(
            f"{ix.idx}: {ix.dtype} ids cannot come from a {n_vocab}-token vocabulary; pass the "
            "--tokenizer the dataset was made with"
        )
    ids = ix.ids()
    with prepare_progress("tokens", opts.progress) as bar:
        bin_sha = _scan(ix, ids, n_vocab, tok, bar) if len(ids) else hash_file(ix.bin)
    n_docs, b = ix.n_docs, ix.bounds
    k = heldout_count(n_docs, opts.heldout_fraction)
    n_train = int(b[n_docs - k])
    if n_train == 0:
        raise empty_source_error(name, f"{ix.bin} holds no training tokens")
    man = base_manifest(name, tok, opts, megatron_input_hash(ix, bin_sha))
    man["megatron"] = {"prefix": str(ix.idx.with_suffix("")), "dtype": ix.dtype}
    train_ends = b[1 : n_docs - k + 1]
    nonempty = train_ends > b[: n_docs - k]
    in_place = bool(np.all(ids[train_ends[nonempty] - 1] == eos))
    with atomic_dir(out) as tmp:
        w = StoreWriter(tmp, dt, eos, train_file=not in_place)
        held = [_strip_eos(ids[b[i] : b[i + 1]], eos) for i in range(n_docs - k, n_docs)]
        held = [d for d in held if len(d)]
        for d, text in zip(held, decode_docs(tok, held), strict=True):
            w.add_heldout(d, len(text.encode("utf-8")))
        train = None
        if in_place:
            sha = npy_train_sha(bin_sha, 0, n_train)
            train = {"file": str(ix.bin), "offset": 0, "n_tokens": n_train,
                     "n_docs": int(nonempty.sum()), "sha256": sha}  # fmt: skip
        else:
            _copy_with_eos(w, ids, b[: n_docs - k + 1], eos)
        w.finish(man, train)
    return TokenStore.open(out)


def _copy_with_eos(w: StoreWriter, ids: np.ndarray, bounds: np.ndarray, eos: int) -> None:
    """Training documents to train.bin, EOS appended to each that lacks it, in blocks."""
    step = 4096
    for a in range(0, len(bounds) - 1, step):
        bb = bounds[a : a + step + 1]
        chunk = np.asarray(ids[bb[0] : bb[-1]])
        ends = bb[1:][bb[1:] > bb[:-1]] - bb[0]  # nonempty documents' ends within the chunk
        missing = ends[chunk[ends - 1] != eos] if len(ends) else ends
        w.add_train(np.insert(chunk, missing, eos), len(ends))


def _strip_eos(doc: np.ndarray, eos: int) -> np.ndarray:
    doc = np.asarray(doc)
    return doc[:-1] if len(doc) and doc[-1] == eos else doc
