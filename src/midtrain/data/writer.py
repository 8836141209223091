"""What every kind of `data prepare` shares: the store writer, options, manifest and progress.

`prepare.py` (text), `npy.py` (OLMo token files) and `megatron.py` (.bin/.idx) all write a store
through these; none of them imports another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.progress import Progress

from midtrain.console import progress as progress_bar
from midtrain.console import unit_column
from midtrain.data.store import FORMAT, ManifestRecord, TrainRecord, content_hash_of
from midtrain.data.tokenizer import tokenizer_hash, vocab_size
from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_json, library_versions


class StoreWriter:
    """Appends training ids to train.bin and held-out documents to heldout.bin, hashing as it goes.

    Also used by `midtrain bench mix` and the tests to build stores from generated ids.
    """

    def __init__(self, root: Path, dtype: np.dtype, eos_id: int, *, train_file: bool = True):
        self.root, self.dtype, self.eos_id = root, dtype, eos_id
        self._train: IO[bytes] | None = open(root / "train.bin", "wb") if train_file else None
        self._heldout = open(root / "heldout.bin", "wb")
        self.train_sha = hashlib.sha256()
        self.heldout_offsets: list[int] = [0]
        self.heldout_nbytes: list[int] = []
        self.n_train_tokens = self.n_train_docs = 0

    def add_train(self, ids: np.ndarray, n_docs: int) -> None:
        """Append a flat run of ids (EOS already after each of its `n_docs` documents)."""
        assert self._train is not None
        data = np.ascontiguousarray(ids, dtype=self.dtype).tobytes()
        self._train.write(data)
        self.train_sha.update(data)
        self.n_train_tokens += len(ids)
        self.n_train_docs += n_docs

    def add_heldout(self, doc: np.ndarray, n_bytes: int) -> None:
        self._heldout.write(np.append(doc, self.eos_id).astype(self.dtype).tobytes())
        self.heldout_offsets.append(self.heldout_offsets[-1] + len(doc) + 1)
        self.heldout_nbytes.append(n_bytes)

    def finish(self, manifest: ManifestRecord, train: TrainRecord | None = None) -> None:
        """Close the files and write heldout_*.npy and manifest.json (with the content hash).

        `manifest` (`base_manifest`'s, with any kind-specific keys) and `train` (None: train.bin)
        are parts of manifest.json; `TokenStore.open` checks it against `store.StoreManifest`."""
        if self._train is not None:
            self._train.close()
        self._heldout.close()
        np.save(self.root / "heldout_docs.npy", np.asarray(self.heldout_offsets, dtype=np.int64))
        np.save(self.root / "heldout_bytes.npy", np.asarray(self.heldout_nbytes, dtype=np.int64))
        train = train or {
            "file": "train.bin",
            "offset": 0,
            "n_tokens": self.n_train_tokens,
            "n_docs": self.n_train_docs,
            "sha256": self.train_sha.hexdigest(),
        }
        man: ManifestRecord = {
            **manifest,
            "format": FORMAT,
            "dtype": self.dtype.name,
            "eos_id": self.eos_id,
            "train": train,
            "heldout": {
                "n_docs": len(self.heldout_nbytes),
                "n_tokens": self.heldout_offsets[-1] - len(self.heldout_nbytes),
                "n_bytes": int(sum(self.heldout_nbytes)),
            },
            "versions": library_versions(),
        }
        man["content_hash"] = content_hash_of(self.root, man)
        atomic_write_json(self.root / "manifest.json", man)


def prepare_progress(unit: str, enabled: bool) -> Progress:
    return progress_bar(*unit_column(unit), enabled=enabled)


@dataclass(frozen=True)
class PrepareOptions:
    heldout_fraction: float = 0.01
    seed: int = 0
    text_field: str = "text"
    npy_dtype: str | None = None  # "uint16" | "uint32" | None (header, else inferred from vocab)
    progress: bool = True
    allow_special_text: bool = False  # keep special-token strings in text (prepare_source)


def base_manifest(name: str, tok: Any, opts: PrepareOptions, input_hash: str) -> ManifestRecord:
    return {
        "name": name,
        "vocab_size": vocab_size(tok),
        "tokenizer_hash": tokenizer_hash(tok),
        "input_hash": input_hash,
        "seed": opts.seed,
        "heldout_fraction": opts.heldout_fraction,
    }


def empty_source_error(name: str, what: str) -> MidtrainError:
    return MidtrainError(f"source {name!r}: {what}; check the INPUT paths and --text-field")
