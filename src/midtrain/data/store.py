"""Token stores: one directory per source, tokenised once, read as memory maps.

Layout (docs/data.md):
    manifest.json        format, name, dtype, vocab_size, eos_id, hashes, seed, split sizes, versions
    train.bin            flat ids, EOS after every document (absent for .npy inputs: the manifest's
                         train.file/offset then point into the original file, read zero-copy)
    heldout.bin          held-out documents' ids, EOS after each
    heldout_docs.npy     int64, n_docs + 1 entries: doc i is heldout.bin[off[i] : off[i+1] - 1]
    heldout_bytes.npy    int64 UTF-8 byte count of each held-out document

Writing lives in `data/prepare.py`. Text sources stream: documents are encoded in batches and appended to train.bin, so a source larger
than RAM works. The held-out split is whole documents: a seeded choice of round(fraction * n_docs)
documents for text inputs, the final documents of the file for .npy inputs (so that the training
part stays one contiguous, zero-copy range). The manifest has no timestamps: preparing the same
inputs twice gives byte-identical stores.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from midtrain.errors import MidtrainError
from midtrain.io import hash_file, hash_obj

FORMAT = "midtrain-store/1"
DTYPES = {"uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32)}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
NAME_MAX = 100  # characters of a store name (a folder name; derived names add a suffix)


def dtype_for_vocab(n_vocab: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65536), else uint32."""
    return DTYPES["uint16"] if n_vocab <= 1 << 16 else DTYPES["uint32"]


def heldout_count(n_docs: int, fraction: float) -> int:
    """round(fraction * n_docs), at least one document when fraction > 0, and never all of them."""
    k = round(fraction * n_docs)
    if fraction > 0 and n_docs >= 2:
        k = max(k, 1)
    return max(0, min(k, n_docs - 1))


def heldout_mask(n_docs: int, fraction: float, seed: int) -> np.ndarray:
    """Which documents are held out: a seeded choice of whole documents."""
    mask = np.zeros(n_docs, dtype=bool)
    k = heldout_count(n_docs, fraction)
    if k:
        mask[np.random.default_rng([seed, 0x48454C44]).choice(n_docs, size=k, replace=False)] = True
    return mask


# ------------------------------------------------------------------------------------------------
# manifest.json


class TrainRecord(TypedDict):
    """manifest.json's "train": where the training ids are and what they hash to."""

    file: str  # "train.bin", or the absolute path of a .npy / Megatron .bin read in place
    offset: int  # bytes into `file`
    n_tokens: int
    n_docs: int
    sha256: str


class HeldoutRecord(TypedDict):
    n_docs: int
    n_tokens: int
    n_bytes: int  # UTF-8 bytes of the held-out documents


class MegatronRecord(TypedDict):
    prefix: str  # the .bin/.idx pair's path without its suffix
    dtype: str


class ManifestRecord(TypedDict, total=False):
    """manifest.json's object: every key code reads or writes. `StoreManifest` checks the ones
    readers rely on when a store opens (`TokenStore.manifest` has them all); `base_manifest`
    gives the first part, `StoreWriter.finish` the rest; `existing_manifest` reads one unchecked
    ({} when unreadable)."""

    format: str
    name: str
    dtype: str  # a key of DTYPES
    vocab_size: int
    eos_id: int
    tokenizer_hash: str
    input_hash: str
    content_hash: str
    seed: int
    heldout_fraction: float
    text_field: str  # text inputs only
    special_text: dict[str, int]  # text inputs only: special-token strings kept ({} = none)
    megatron: MegatronRecord  # Megatron inputs only
    train: TrainRecord
    heldout: HeldoutRecord
    versions: dict[str, str]


class _PickledStore(TypedDict):
    path: Path
    manifest: ManifestRecord
    _train: None


# ------------------------------------------------------------------------------------------------
# Reading


@dataclass
class TokenStore:
    """A prepared source. Open with `TokenStore.open(path)`; arrays are read-only memory maps."""

    path: Path
    manifest: ManifestRecord  # manifest.json as read (checked against `StoreManifest`)
    _train: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> TokenStore:
        path = Path(path)
        man = _read_manifest(path)
        store = cls(path, man)
        store._check_files()
        return store

    name = property(lambda self: self.manifest["name"])
    dtype = property(lambda self: DTYPES[self.manifest["dtype"]])
    vocab_size = property(lambda self: int(self.manifest["vocab_size"]))
    eos_id = property(lambda self: int(self.manifest["eos_id"]))
    tokenizer_hash = property(lambda self: self.manifest["tokenizer_hash"])
    content_hash = property(lambda self: self.manifest["content_hash"])
    input_hash = property(lambda self: self.manifest["input_hash"])
    n_train_tokens = property(lambda self: int(self.manifest["train"]["n_tokens"]))
    n_train_docs = property(lambda self: int(self.manifest["train"]["n_docs"]))
    n_heldout_docs = property(lambda self: int(self.manifest["heldout"]["n_docs"]))

    def __getstate__(self) -> _PickledStore:
        """Pickle the path and manifest only (never the memory map's contents)."""
        return {"path": self.path, "manifest": self.manifest, "_train": None}

    @property
    def train_file(self) -> Path:
        """train.bin, or the original .npy file for token inputs (absolute in the manifest)."""
        return self.path / self.manifest["train"]["file"]

    def train_tokens(self) -> np.ndarray:
        """The training ids as a 1-D read-only memmap (no copy)."""
        if self._train is None:
            n, off = self.n_train_tokens, int(self.manifest["train"]["offset"])
            if n == 0:
                self._train = np.empty(0, dtype=self.dtype)
            else:
                self._train = np.memmap(
                    self.train_file, dtype=self.dtype, mode="r", offset=off, shape=(n,)
                )
        return self._train

    def heldout_docs(self) -> list[np.ndarray]:
        """Token ids of each held-out document (no EOS)."""
        ids = np.fromfile(self.path / "heldout.bin", dtype=self.dtype)
        off = np.load(self.path / "heldout_docs.npy")
        return [ids[a : b - 1] for a, b in zip(off[:-1], off[1:], strict=True)]

    def heldout_bytes(self) -> np.ndarray:
        """UTF-8 byte count of each held-out document (for bits per byte)."""
        return np.load(self.path / "heldout_bytes.npy")

    def windows(self, seq_len: int) -> int:
        """How many non-overlapping `seq_len`-token windows the training stream holds."""
        return self.n_train_tokens // seq_len

    def verify(self) -> None:
        """Recompute the content hash from the files (slow for big stores; `open` checks sizes)."""
        if _content_hash(self) != self.content_hash:
            raise MidtrainError(
                f"{self.path}: token files do not match manifest.json content_hash; "
                "re-run `midtrain data prepare`"
            )

    def _check_files(self) -> None:
        t = self.manifest["train"]
        need = int(t["offset"]) + self.n_train_tokens * self.dtype.itemsize
        f = self.train_file
        if not f.is_file() or f.stat().st_size < need:
            raise MidtrainError(
                f"{self.path}: training tokens {f} are missing or shorter than manifest.json says "
                f"({need} bytes); restore the file or re-run `midtrain data prepare`"
            )
        for name in ("heldout.bin", "heldout_docs.npy", "heldout_bytes.npy"):
            if not (self.path / name).is_file():
                raise MidtrainError(
                    f"{self.path}: {name} is missing; re-run `midtrain data prepare`"
                )


class _Split(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    n_docs: NonNegativeInt
    n_tokens: NonNegativeInt


class _Train(_Split):
    file: str = Field(min_length=1)
    offset: NonNegativeInt
    sha256: str


class _Heldout(_Split):
    n_bytes: NonNegativeInt


class StoreManifest(BaseModel):
    """The typed fields of manifest.json that readers rely on (others, e.g. versions, pass)."""

    model_config = ConfigDict(extra="allow", strict=True)

    format: str
    name: str
    dtype: str
    vocab_size: PositiveInt
    eos_id: NonNegativeInt
    tokenizer_hash: str
    input_hash: str
    content_hash: str
    train: _Train
    heldout: _Heldout
    special_text: dict[str, NonNegativeInt] | None = None


def _read_manifest(path: Path) -> ManifestRecord:
    """manifest.json as a dict, checked against `StoreManifest`: a one-line error naming the
    file and the field, never a ValueError later when a property reads it."""
    import json

    mf = path / "manifest.json"
    if not mf.is_file():
        raise MidtrainError(
            f"{path}: no manifest.json, not a token store; create it with `midtrain data prepare`"
        )
    fix = "re-run `midtrain data prepare` for this source"
    try:
        man = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MidtrainError(f"{mf} is corrupt ({e}); {fix}") from None
    if not isinstance(man, dict):
        raise MidtrainError(f"{mf} is corrupt (not an object); {fix}")
    try:
        m = StoreManifest.model_validate(man)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        got = (
            "is missing"
            if err["type"] == "missing"
            else f"is {repr(err.get('input'))[:60]} but {str(err['msg']).removeprefix('Input ')}"
        )
        raise MidtrainError(f"{mf} is corrupt: field {key!r} {got}; {fix}") from None
    if m.format != FORMAT:
        raise MidtrainError(f"{mf}: format {m.format!r} is not {FORMAT!r}; {fix}")
    if m.dtype not in DTYPES:
        raise MidtrainError(f"{mf} is corrupt: dtype {m.dtype!r} not uint16/uint32; {fix}")
    if m.vocab_size > np.iinfo(DTYPES[m.dtype]).max + 1:
        raise MidtrainError(
            f"{mf} is corrupt: vocab_size {m.vocab_size} does not fit {m.dtype}; {fix}"
        )
    if m.eos_id >= m.vocab_size:
        raise MidtrainError(f"{mf} is corrupt: eos_id {m.eos_id} >= vocab_size; {fix}")
    return man


def open_store(path: str | Path, field: str) -> TokenStore:
    """Open a store named by a config field; a one-line error naming the field."""
    if not Path(path).is_dir():
        raise MidtrainError(f"{field}: {path} is not a folder; run `midtrain data prepare`")
    try:
        return TokenStore.open(path)
    except MidtrainError as e:
        raise MidtrainError(f"{field}: {e}") from None


def content_hash_of(root: Path, man: ManifestRecord) -> str:
    files = ("heldout.bin", "heldout_docs.npy", "heldout_bytes.npy")
    return hash_obj(
        {
            "format": FORMAT,
            "dtype": man["dtype"],
            "eos_id": man["eos_id"],
            "vocab_size": man["vocab_size"],
            "tokenizer_hash": man["tokenizer_hash"],
            "train": {k: man["train"][k] for k in ("n_tokens", "n_docs", "sha256")},
            "files": {f: hash_file(root / f) for f in files},
        }
    )


def _content_hash(store: TokenStore) -> str:
    t = store.manifest["train"]
    if t["file"] == "train.bin":
        sha = hash_file(store.train_file)
    else:  # a .npy input: its training part is identified by the whole file's hash
        sha = npy_train_sha(hash_file(store.train_file), int(t["offset"]), int(t["n_tokens"]))
    man = {**store.manifest, "train": {**t, "sha256": sha}}
    return content_hash_of(store.path, man)


def npy_train_sha(file_sha256: str, offset: int, n_tokens: int) -> str:
    return hash_obj({"file_sha256": file_sha256, "offset": offset, "n_tokens": n_tokens})
