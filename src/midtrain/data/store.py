"""Token stores: one directory per source, tokenised once, read as memory maps.

Layout (see docs/ARCHITECTURE.md):
    manifest.json        format, name, dtype, vocab_size, eos_id, hashes, seed, split sizes, versions
    train.bin            flat ids, EOS after every document (absent for .npy inputs: the manifest's
                         train.file/offset then point into the original file, read zero-copy)
    heldout.bin          held-out documents' ids, EOS after each
    heldout_docs.npy     int64, n_docs + 1 entries: doc i is heldout.bin[off[i] : off[i+1] - 1]
    heldout_bytes.npy    int64 UTF-8 byte count of each held-out document

Text sources stream: documents are encoded in batches and appended to train.bin, so a source larger
than RAM works. The held-out split is whole documents: a seeded choice of round(fraction * n_docs)
documents for text inputs, the final documents of the file for .npy inputs (so that the training
part stays one contiguous, zero-copy range). The manifest has no timestamps: preparing the same
inputs twice gives byte-identical stores.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from midtrain.data import readers
from midtrain.data.tokenizer import (
    decode_docs,
    encode_docs,
    load_tokenizer,
    tokenizer_hash,
    vocab_size,
)
from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, atomic_write_json, hash_file, hash_obj, library_versions

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

FORMAT = "midtrain-store/1"
DTYPES = {"uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32)}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
ENCODE_BATCH_DOCS = 512
ENCODE_BATCH_CHARS = 4 << 20
SCAN_CHUNK_TOKENS = 16 << 20


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
# Reading


@dataclass
class TokenStore:
    """A prepared source. Open with `TokenStore.open(path)`; arrays are read-only memory maps."""

    path: Path
    manifest: dict[str, Any]
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

    def __getstate__(self) -> dict[str, Any]:
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


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format": str,
    "name": str,
    "dtype": str,
    "vocab_size": int,
    "eos_id": int,
    "tokenizer_hash": str,
    "input_hash": str,
    "content_hash": str,
    "train": dict,
    "heldout": dict,
}


def _read_manifest(path: Path) -> dict[str, Any]:
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
    for key, typ in _REQUIRED.items():
        if not isinstance(man.get(key), typ):
            raise MidtrainError(f"{mf} is corrupt: field {key!r} missing or wrong type; {fix}")
    if man["format"] != FORMAT:
        raise MidtrainError(f"{mf}: format {man['format']!r} is not {FORMAT!r}; {fix}")
    if man["dtype"] not in DTYPES:
        raise MidtrainError(f"{mf} is corrupt: dtype {man['dtype']!r} not uint16/uint32; {fix}")
    if man["vocab_size"] > np.iinfo(DTYPES[man["dtype"]]).max + 1:
        raise MidtrainError(
            f"{mf} is corrupt: vocab_size {man['vocab_size']} does not fit {man['dtype']}; {fix}"
        )
    for key in ("file", "offset", "n_tokens", "n_docs"):
        if key not in man["train"]:
            raise MidtrainError(f"{mf} is corrupt: field 'train.{key}' missing; {fix}")
    return man


# ------------------------------------------------------------------------------------------------
# Writing


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

    def finish(self, manifest: dict[str, Any], train: dict[str, Any] | None = None) -> None:
        """Close the files and write heldout_*.npy and manifest.json (with the content hash)."""
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
        man = {
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
        man["content_hash"] = _content_hash_of(self.root, man)
        atomic_write_json(self.root / "manifest.json", man)


def _content_hash_of(root: Path, man: dict[str, Any]) -> str:
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
        sha = _npy_train_sha(hash_file(store.train_file), int(t["offset"]), int(t["n_tokens"]))
    man = {**store.manifest, "train": {**t, "sha256": sha}}
    return _content_hash_of(store.path, man)


def _progress(unit: str, enabled: bool) -> Progress:
    console = Console(stderr=True)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )


@dataclass(frozen=True)
class PrepareOptions:
    heldout_fraction: float = 0.01
    seed: int = 0
    text_field: str = "text"
    npy_dtype: str | None = None  # "uint16" | "uint32" | None (header, else inferred from vocab)
    progress: bool = True


def prepare_source(
    name: str,
    inputs: Iterable[str | Path],
    out: str | Path,
    tokenizer: PreTrainedTokenizerFast | str | Path,
    *,
    heldout_fraction: float = 0.01,
    seed: int = 0,
    text_field: str = "text",
    npy_dtype: str | None = None,
    progress: bool = True,
) -> TokenStore:
    """Tokenise `inputs` into a token store at `out` (written atomically) and open it.

    Every input is validated (a full read) before anything is written.
    """
    opts = PrepareOptions(heldout_fraction, seed, text_field, npy_dtype, progress)
    _check_options(name, opts)
    tok = tokenizer if not isinstance(tokenizer, str | Path) else load_tokenizer(tokenizer)
    resolved = readers.resolve_inputs(list(inputs))
    kinds = {i.kind for i in resolved}
    if "npy" in kinds:
        if len(resolved) != 1:
            raise MidtrainError(
                f"source {name!r}: a .npy token file must be the only input of its source "
                f"(got {len(resolved)} inputs); prepare each file as its own source"
            )
        return _prepare_npy(name, resolved[0].path, Path(out), tok, opts)
    return _prepare_text(name, resolved, Path(out), tok, opts)


def _check_options(name: str, opts: PrepareOptions) -> None:
    if not NAME_RE.match(name) or name == "tokenizer":
        raise MidtrainError(
            f"--name {name!r}: use letters, digits, '_', '.', '-' (not 'tokenizer'), e.g. web"
        )
    if not 0.0 <= opts.heldout_fraction < 1.0:
        raise MidtrainError(
            f"--heldout-fraction {opts.heldout_fraction}: must be in [0, 1), e.g. 0.01"
        )
    if opts.npy_dtype not in (None, *DTYPES):
        raise MidtrainError(f"--npy-dtype {opts.npy_dtype!r}: use uint16 or uint32")


def _base_manifest(name: str, tok: Any, opts: PrepareOptions, input_hash: str) -> dict[str, Any]:
    return {
        "name": name,
        "vocab_size": vocab_size(tok),
        "tokenizer_hash": tokenizer_hash(tok),
        "input_hash": input_hash,
        "seed": opts.seed,
        "heldout_fraction": opts.heldout_fraction,
    }


def _empty_source(name: str, what: str) -> MidtrainError:
    return MidtrainError(f"source {name!r}: {what}; check the INPUT paths and --text-field")


def _prepare_text(
    name: str, inputs: list[readers.Input], out: Path, tok: Any, opts: PrepareOptions
) -> TokenStore:
    with _progress("docs", opts.progress) as bar:
        task = bar.add_task(f"reading {name}", total=None)
        scan = readers.scan_inputs(inputs, opts.text_field, lambda n: bar.advance(task, n))
    if scan.n_docs == 0:
        raise _empty_source(name, "the inputs hold no documents")
    n_vocab, eos = vocab_size(tok), tok.eos_token_id
    mask = heldout_mask(scan.n_docs, opts.heldout_fraction, opts.seed)
    man = _base_manifest(name, tok, opts, scan.input_hash)
    man["text_field"] = opts.text_field
    with atomic_dir(out) as tmp, _progress("docs", opts.progress) as bar:
        task = bar.add_task(f"tokenising {name}", total=scan.n_docs)
        w = StoreWriter(tmp, dtype_for_vocab(n_vocab), eos)
        i = 0
        for texts in _batches(readers.iter_texts(inputs, opts.text_field)):
            docs = encode_docs(tok, texts)
            held = mask[i : i + len(docs)]
            train = [np.append(d, eos) for d, h in zip(docs, held, strict=True) if not h]
            if train:
                w.add_train(np.concatenate(train), len(train))
            for d, t, h in zip(docs, texts, held, strict=True):
                if h:
                    w.add_heldout(d, len(t.encode("utf-8")))
            i += len(docs)
            bar.advance(task, len(docs))
        w.finish(man)
    return TokenStore.open(out)


def _batches(texts: Iterator[str]) -> Iterator[list[str]]:
    """Groups of documents for encode_batch, bounded in count and characters (streaming)."""
    batch: list[str] = []
    chars = 0
    for t in texts:
        batch.append(t)
        chars += len(t)
        if len(batch) >= ENCODE_BATCH_DOCS or chars >= ENCODE_BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


# ------------------------------------------------------------------------------------------------
# OLMo-style token files


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


def _prepare_npy(name: str, path: Path, out: Path, tok: Any, opts: PrepareOptions) -> TokenStore:
    path = path.resolve()
    n_vocab, eos = vocab_size(tok), tok.eos_token_id
    dtype, offset = _npy_layout(path, n_vocab, opts.npy_dtype)
    n = (path.stat().st_size - offset) // dtype.itemsize
    ids = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(n,))
    with _progress("tokens", opts.progress) as bar:
        scan = _scan_npy(path, ids, eos, n_vocab, bar)
    n_docs = len(scan.ends)
    k = heldout_count(n_docs, opts.heldout_fraction)
    bounds = np.concatenate([[0], scan.ends])  # doc i is ids[bounds[i] : bounds[i + 1]]
    n_train = int(bounds[n_docs - k])  # the final k documents are held out
    if n_train == 0:
        raise _empty_source(name, f"{path} holds no training tokens")
    input_hash = hash_obj({"inputs": [{"kind": "npy", "name": path.name, "sha256": scan.sha256}]})
    man = _base_manifest(name, tok, opts, input_hash)
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
            "sha256": _npy_train_sha(scan.sha256, offset, n_train),
        }
        w.finish(man, train)
    return TokenStore.open(out)


def _npy_train_sha(file_sha256: str, offset: int, n_tokens: int) -> str:
    return hash_obj({"file_sha256": file_sha256, "offset": offset, "n_tokens": n_tokens})


def _strip_eos(doc: np.ndarray, eos: int) -> np.ndarray:
    doc = np.asarray(doc)
    return doc[:-1] if len(doc) and doc[-1] == eos else doc


# ------------------------------------------------------------------------------------------------
# `midtrain data prepare` and generated stores


def prepare_data(
    inputs: list[str | Path],
    *,
    name: str,
    out: str | Path,
    tokenizer: str | Path | None = None,
    train_vocab_size: int | None = None,
    tokenizer_out: str | Path | None = None,
    heldout_fraction: float = 0.01,
    seed: int = 0,
    text_field: str = "text",
    npy_dtype: str | None = None,
    progress: bool = True,
) -> TokenStore:
    """The API of `midtrain data prepare`: the store goes to OUT/NAME.

    With `train_vocab_size`, a byte-level BPE is first trained on the inputs and saved to
    `tokenizer_out` (default OUT/tokenizer). Inputs are validated before anything is written, and
    a failure removes what this call created.
    """
    from midtrain.data.tokenizer import train_tokenizer

    out = Path(out)
    if (tokenizer is None) == (train_vocab_size is None):
        raise MidtrainError(
            "pass either --tokenizer DIR (an existing HF tokenizer) or --train-tokenizer "
            "--vocab-size N"
        )
    _check_options(name, PrepareOptions(heldout_fraction, seed, text_field, npy_dtype))
    out_existed, tok_dir = out.exists(), None
    tok: Any = tokenizer
    if train_vocab_size is not None:
        tok_dir = Path(tokenizer_out) if tokenizer_out else out / "tokenizer"
        if tok_dir.exists():
            raise MidtrainError(
                f"{tok_dir} already exists; reuse it with --tokenizer {tok_dir} or pick "
                "another --tokenizer-out"
            )
        resolved = readers.resolve_inputs(inputs)
        if any(i.kind == "npy" for i in resolved):
            raise MidtrainError(
                "--train-tokenizer needs text inputs; .npy files are already tokens "
                "(pass the --tokenizer they were made with)"
            )
        readers.scan_inputs(resolved, text_field)  # validate before writing the tokenizer
        tok = train_tokenizer(readers.iter_texts(resolved, text_field), train_vocab_size, tok_dir)
    try:
        return prepare_source(
            name,
            inputs,
            out / name,
            tok,
            heldout_fraction=heldout_fraction,
            seed=seed,
            text_field=text_field,
            npy_dtype=npy_dtype,
            progress=progress,
        )
    except BaseException:
        if tok_dir is not None:
            shutil.rmtree(tok_dir, ignore_errors=True)
        if not out_existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def write_store(
    out: str | Path,
    name: str,
    train_chunks: Iterable[np.ndarray],
    *,
    vocab_size: int,
    eos_id: int,
    tokenizer_hash: str,
    heldout: Iterable[tuple[np.ndarray, int]] = (),
    input_hash: str = "generated",
) -> TokenStore:
    """A store from ids made elsewhere (benchmarks, tests): flat chunks with EOS after each doc.

    `heldout` yields (ids without EOS, UTF-8 byte count) per held-out document.
    """
    dtype = dtype_for_vocab(vocab_size)
    with atomic_dir(out) as tmp:
        w = StoreWriter(Path(tmp), dtype, eos_id)
        for chunk in train_chunks:
            w.add_train(chunk, int(np.count_nonzero(chunk == eos_id)))
        for doc, n_bytes in heldout:
            w.add_heldout(np.asarray(doc), n_bytes)
        man = {
            "name": name,
            "vocab_size": vocab_size,
            "tokenizer_hash": tokenizer_hash,
            "input_hash": input_hash,
            "seed": 0,
            "heldout_fraction": 0.0,
        }
        w.finish(man)
    return TokenStore.open(out)
