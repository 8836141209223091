"""Writing token stores: `midtrain data prepare` (text, jsonl, parquet, HF datasets, .npy tokens,
Megatron .bin/.idx).

Every input is validated before anything is written; a store is built in a temporary folder and
renamed into place (see `data/store.py` for the layout).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from midtrain.data import encode, readers
from midtrain.data.existing import (
    existing_manifest,
    exists_error,
    identical_store,
    replaced_warnings,
)
from midtrain.data.store import (
    DTYPES,
    NAME_MAX,
    NAME_RE,
    TokenStore,
    dtype_for_vocab,
    heldout_mask,
)
from midtrain.data.tokenizer import (
    encode_docs,
    load_tokenizer,
    special_strings,
    vocab_size,
)
from midtrain.data.writer import (
    PrepareOptions,
    StoreWriter,
    base_manifest,
    empty_source_error,
    prepare_progress,
)
from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, hash_obj

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

ENCODE_BATCH_DOCS = 512
ENCODE_BATCH_CHARS = 4 << 20
SCAN_TOKENS = 1 << 24  # tokens read at a time when splitting a store into documents


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
    allow_special_text: bool = False,
) -> TokenStore:
    """Tokenise `inputs` into a token store at `out` (written atomically) and open it.

    Every input is validated (a full read) before anything is written; an existing store at `out`
    is replaced (`prepare_data`, the CLI's API, refuses that without `force`). Text holding one of
    the tokenizer's special tokens as a string (`<|endoftext|>`...) is refused unless
    `allow_special_text`: the tokenizer would read it as the special id (EOS splits a document).
    """
    opts = PrepareOptions(
        heldout_fraction, seed, text_field, npy_dtype, progress, allow_special_text
    )
    _check_options(name, opts)
    tok = tokenizer if not isinstance(tokenizer, str | Path) else load_tokenizer(tokenizer)
    resolved = readers.resolve_inputs(list(inputs))
    tokens = [i for i in resolved if i.kind in readers.TOKEN_KINDS]
    if tokens:
        if len(resolved) != 1:
            what = "a .npy token file" if tokens[0].kind == "npy" else "a Megatron .bin/.idx pair"
            raise MidtrainError(
                f"source {name!r}: {what} must be the only input of its source "
                f"(got {len(resolved)} inputs); prepare each file as its own source"
            )
        if tokens[0].kind == "megatron":
            from midtrain.data.megatron import prepare_megatron

            return prepare_megatron(name, tokens[0].path, Path(out), tok, opts)
        from midtrain.data.npy import prepare_npy

        return prepare_npy(name, resolved[0].path, Path(out), tok, opts)
    return _prepare_text(name, resolved, Path(out), tok, opts)


def _check_options(name: str, opts: PrepareOptions) -> None:
    if not NAME_RE.match(name) or name == "tokenizer":
        raise MidtrainError(
            f"--name {name!r}: use letters, digits, '_', '.', '-' (not 'tokenizer'), e.g. web"
        )
    if len(name) > NAME_MAX:
        raise MidtrainError(
            f"--name {name[:20]}... ({len(name)} characters): use at most {NAME_MAX}, e.g. web"
        )
    if not 0.0 <= opts.heldout_fraction < 1.0:
        raise MidtrainError(
            f"--heldout-fraction {opts.heldout_fraction}: must be in [0, 1), e.g. 0.01"
        )
    if opts.npy_dtype not in (None, *DTYPES):
        raise MidtrainError(f"--npy-dtype {opts.npy_dtype!r}: use uint16 or uint32")


def _prepare_text(
    name: str, inputs: list[readers.Input], out: Path, tok: Any, opts: PrepareOptions
) -> TokenStore:
    with prepare_progress("docs", opts.progress) as bar:
        task = bar.add_task(f"reading {name}", total=None)
        scan = readers.scan_inputs(
            inputs, opts.text_field, lambda n: bar.advance(task, n), special=special_strings(tok)
        )
    if scan.n_docs == 0:
        raise empty_source_error(name, "the inputs hold no documents")
    check_special_text(name, scan, opts.allow_special_text)
    n_vocab, eos = vocab_size(tok), tok.eos_token_id
    mask = heldout_mask(scan.n_docs, opts.heldout_fraction, opts.seed)
    man = base_manifest(name, tok, opts, scan.input_hash)
    man["text_field"] = opts.text_field
    man["special_text"] = dict(sorted(scan.special.items()))  # {}: scanned, none found
    with atomic_dir(out) as tmp, prepare_progress("docs", opts.progress) as bar:
        task = bar.add_task(f"tokenising {name}", total=scan.n_docs)
        w = StoreWriter(tmp, dtype_for_vocab(n_vocab), eos)
        groups = encode.batches(
            readers.iter_texts(inputs, opts.text_field), ENCODE_BATCH_DOCS, ENCODE_BATCH_CHARS
        )
        i = 0
        for texts, docs in encode.encoded(tok, groups, encode_docs):
            _write_batch(w, texts, docs, mask[i : i + len(docs)])
            i += len(docs)
            bar.advance(task, len(docs))
        w.finish(man)
    return TokenStore.open(out)


def check_special_text(name: str, scan: readers.Scan, allow: bool) -> None:
    """Refuse text that holds special-token strings, naming the first place, unless `allow`."""
    if not scan.special or allow:
        return
    assert scan.first_special is not None
    where, token = scan.first_special
    found = ", ".join(f"{t!r} x{n:,}" for t, n in sorted(scan.special.items()))
    raise MidtrainError(
        f"{where}: holds the tokenizer's special token {token!r} as text (source {name!r}: "
        f"{found}); it would be read as that token's id (EOS would split the document): "
        "remove it from the data, or pass --allow-special-text to keep it"
    )


def _write_batch(
    w: StoreWriter, texts: list[str], docs: list[np.ndarray], held: np.ndarray
) -> None:
    """One encoded batch: its training documents as one run of ids with EOS after each (one
    concatenation), its held-out ones one by one with their UTF-8 byte counts."""
    eos = np.asarray([w.eos_id], dtype=np.int64)
    train = [a for d, h in zip(docs, held, strict=True) if not h for a in (d, eos)]
    if train:
        w.add_train(np.concatenate(train), len(train) // 2)
    for d, t, h in zip(docs, texts, held, strict=True):
        if h:
            w.add_heldout(d, len(t.encode("utf-8")))


# ------------------------------------------------------------------------------------------------
# `midtrain data prepare` and generated stores


@dataclass(frozen=True)
class PrepareResult:
    """What `prepare_data` did: the store, and what the CLI tells the user about it."""

    store: TokenStore
    identical: bool = False  # an identical store was already there; nothing was written
    tokenizer_dir: Path | None = None  # where --train-tokenizer saved its tokenizer
    warnings: tuple[str, ...] = ()


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
    force: bool = False,
    allow_special_text: bool = False,
) -> PrepareResult:
    """The API of `midtrain data prepare`: the store goes to OUT/NAME.

    An existing OUT/NAME is never replaced unless `force` (a store made from the same inputs,
    tokenizer and options is left as it is and returned with `identical`). With
    `train_vocab_size`, a byte-level BPE is first trained on the inputs and saved to
    `tokenizer_out` (default OUT/tokenizer). Inputs are validated before anything is written, and
    a failure removes what this call created.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise MidtrainError(f"--out {out} is a file; pass the data folder the store goes into")
    if (tokenizer is None) == (train_vocab_size is None):
        raise MidtrainError(
            "pass either --tokenizer DIR (an existing HF tokenizer) or --train-tokenizer "
            "--vocab-size N"
        )
    opts = PrepareOptions(
        heldout_fraction, seed, text_field, npy_dtype, progress, allow_special_text
    )
    _check_options(name, opts)
    dest = out / name
    old = existing_manifest(dest, name)
    resolved = readers.resolve_inputs(list(inputs))
    tok: Any = load_tokenizer(tokenizer) if tokenizer is not None else None
    if old is not None and not force:
        if tok is not None and (same := identical_store(dest, old, tok, resolved, opts)):
            return PrepareResult(same, identical=True)
        raise exists_error(name, dest, old)
    out_existed, tok_dir = out.exists(), None
    if train_vocab_size is not None:
        tok_dir = Path(tokenizer_out) if tokenizer_out else out / "tokenizer"
        tok = _train_for_source(name, resolved, opts, train_vocab_size, tok_dir)
    try:
        store = prepare_source(name, inputs, dest, tok, **_source_kwargs(opts))
    except BaseException:
        if tok_dir is not None:
            shutil.rmtree(tok_dir, ignore_errors=True)
        if not out_existed and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    return PrepareResult(store, tokenizer_dir=tok_dir, warnings=replaced_warnings(dest, old, store))


def _source_kwargs(opts: PrepareOptions) -> dict[str, float | int | str | bool | None]:
    """`opts` as `prepare_source`'s keywords (its fields' types)."""
    return {f: getattr(opts, f) for f in PrepareOptions.__dataclass_fields__}


def _train_for_source(
    name: str, resolved: list[readers.Input], opts: PrepareOptions, vocab: int, tok_dir: Path
) -> Any:
    """--train-tokenizer: a byte-level BPE over this source's inputs, saved to `tok_dir`."""
    from midtrain.data.tokenizer import EOS, train_tokenizer

    if tok_dir.exists():
        raise MidtrainError(
            f"{tok_dir} already exists; reuse it with --tokenizer {tok_dir} or pick "
            "another --tokenizer-out"
        )
    if any(i.kind in readers.TOKEN_KINDS for i in resolved):
        raise MidtrainError(
            "--train-tokenizer needs text inputs; .npy and Megatron .bin/.idx files are already "
            "tokens "
            "(pass the --tokenizer they were made with)"
        )
    scan = readers.scan_inputs(resolved, opts.text_field, special=[EOS])  # before writing
    if scan.n_docs == 0:
        raise empty_source_error(name, "the inputs hold no documents")
    check_special_text(name, scan, opts.allow_special_text)
    return train_tokenizer(readers.iter_texts(resolved, opts.text_field), vocab, tok_dir)


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


def shard_store(store: TokenStore, k: int, out_root: str | Path) -> list[TokenStore]:
    """`k` disjoint shards of a store's training documents (document j goes to shard j mod k).

    Each shard is distributed like the whole store, so a shard mixed into a run of its own source
    is a candidate whose true effect is zero (an A/A check). Shards have no held-out split.
    """
    toks, eos = store.train_tokens(), store.eos_id
    ends = np.concatenate([
        np.flatnonzero(np.asarray(toks[a : a + SCAN_TOKENS]) == eos) + a + 1
        for a in range(0, len(toks), SCAN_TOKENS)
    ] or [np.zeros(0, dtype=np.int64)])  # fmt: skip
    starts = np.concatenate([[0], ends[:-1]])
    if len(ends) < k:
        raise MidtrainError(f"{store.path}: {len(ends)} documents cannot make {k} shards")
    out = []
    for i in range(k):
        name = f"{store.name}-shard{i}"
        docs = range(i, len(ends), k)
        chunks = (
            np.concatenate([toks[starts[j] : ends[j]] for j in docs[b : b + 4096]])
            for b in range(0, len(docs), 4096)
        )
        out.append(write_store(
            Path(out_root) / name, name, chunks, vocab_size=store.vocab_size, eos_id=eos,
            tokenizer_hash=store.tokenizer_hash,
            input_hash=hash_obj({"shard_of": store.content_hash, "k": k, "i": i}),
        ))  # fmt: skip
    return out
