"""OLMo-style token files (`.npy`, raw uint16/uint32 ids with EOS between documents) as stores.

The training part is read zero-copy from the original file (the manifest points at it); the final
documents are held out. Used by `data/prepare.py` for a source whose only input is a `.npy` file.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import Progress

from midtrain.data.store import DTYPES, TokenStore, dtype_for_vocab, heldout_count, npy_train_sha
from midtrain.data.tokenizer import decode_docs, vocab_size
from midtrain.data.writer import (
    PrepareOptions,
    StoreWriter,
    base_manifest,
    empty_source_error,
    prepare_progress,
)
from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, hash_obj

SCAN_CHUNK_TOKENS = 16 << 20


def _npy_layout(path: Path, n_vocab: int, npy_dtype: str | None) -> tuple[np.dtype, int]:
    """(dtype, byte offset of the first id): from a numpy header if present, else headerless."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic == b"\x93NUMPY":
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 1 or arr.dtype.name not in DTYPES:
            raise MidtrainError(
                f"{path}: a {arr.ndim}-D {arr.dtype} array; token files must be 1-D uint16/uint32"
            )
        if npy_dtype and npy_dtype != arr.dtype.name:
            raise MidtrainError(f"{path}: header says {arr.dtype}, not --npy-dtype {npy_dtype}")
        dtype, offset = arr.dtype, int(arr.offset)
    else:
        dtype, offset = DTYPES[npy_dtype] if npy_dtype else dtype_for_vocab(n_vocab), 0
    if n_vocab > np.iinfo(dtype).max + 1:
        raise MidtrainError(
            f"{path}: {dtype} ids cannot hold a {n_vocab}-token vocabulary (max "
            f"{np.iinfo(dtype).max + 1}); such files are uint32: pass --npy-dtype uint32"
        )
    size = path.stat().st_size - offset
    if size % dtype.itemsize:
        raise MidtrainError(
            f"{path}: {size} bytes is not a whole number of {dtype} ids; check --npy-dtype"
        )
    if size == 0:
        raise MidtrainError(f"{path}: holds no tokens; check the INPUT path")
    return dtype, offset


@dataclass
class _NpyScan:
    ends: np.ndarray  # index one past each document's last token (EOS included when present)
    sha256: str


def _scan_npy(path: Path, ids: np.ndarray, eos: int, n_vocab: int, bar: Progress) -> _NpyScan:
    """One streaming pass: document ends, max id check, and the file's hash."""
    task = bar.add_task(f"scanning {path.name}", total=len(ids))
    ends, h = [], hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
    for i in range(0, len(ids), SCAN_CHUNK_TOKENS):
        chunk = np.asarray(ids[i : i + SCAN_CHUNK_TOKENS])
        if (top := int(chunk.max())) >= n_vocab:
            raise MidtrainError(
                f"{path}: token id {top} >= vocab_size {n_vocab}; the file was tokenised with "
                "another tokenizer or --npy-dtype is wrong"
            )
        ends.append(np.flatnonzero(chunk == eos) + i + 1)
        bar.advance(task, len(chunk))
    all_ends = np.concatenate(ends)
    if len(all_ends) == 0 or all_ends[-1] != len(ids):
        all_ends = np.append(all_ends, len(ids))  # a final document without EOS
    return _NpyScan(all_ends, h.hexdigest())


def prepare_npy(name: str, path: Path, out: Path, tok: Any, opts: PrepareOptions) -> TokenStore:
    path = path.resolve()
    n_vocab, eos = vocab_size(tok), tok.eos_token_id
    dtype, offset = _npy_layout(path, n_vocab, opts.npy_dtype)
    n = (path.stat().st_size - offset) // dtype.itemsize
    ids = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(n,))
    with prepare_progress("tokens", opts.progress) as bar:
        scan = _scan_npy(path, ids, eos, n_vocab, bar)
    n_docs = len(scan.ends)
    k = heldout_count(n_docs, opts.heldout_fraction)
    bounds = np.concatenate([[0], scan.ends])  # doc i is ids[bounds[i] : bounds[i + 1]]
    n_train = int(bounds[n_docs - k])  # the final k documents are held out
    if n_train == 0:
        raise empty_source_error(name, f"{path} holds no training tokens")
    man = base_manifest(name, tok, opts, npy_input_hash(path, scan.sha256))
    with atomic_dir(out) as tmp:
        w = StoreWriter(tmp, dtype, eos, train_file=False)
        held = [
            _strip_eos(ids[a:b], eos)
            for a, b in zip(bounds[n_docs - k : -1], bounds[n_docs - k + 1 :], strict=True)
        ]
        held = [d for d in held if len(d)]
        for d, text in zip(held, decode_docs(tok, held), strict=True):
            w.add_heldout(d, len(text.encode("utf-8")))
        train = {
            "file": str(path),
            "offset": offset,
            "n_tokens": n_train,
            "n_docs": n_docs - k,
            "sha256": npy_train_sha(scan.sha256, offset, n_train),
        }
        w.finish(man, train)
    return TokenStore.open(out)


def npy_input_hash(path: Path, file_sha256: str) -> str:
    """The `input_hash` of a store made from one .npy file (its name and bytes)."""
    return hash_obj({"inputs": [{"kind": "npy", "name": path.name, "sha256": file_sha256}]})


def _strip_eos(doc: np.ndarray, eos: int) -> np.ndarray:
    doc = np.asarray(doc)
    return doc[:-1] if len(doc) and doc[-1] == eos else doc
