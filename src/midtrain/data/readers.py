"""Input readers: a registry from input kind to a function that streams documents.

Kinds (detected from the path):
- `txt`: a `.txt` (or `.txt.gz`) file is ONE document (a folder of them is a folder of documents).
- `jsonl`: one JSON object per line (`.jsonl`, `.jsonl.gz`); the text is in `text_field`.
- `parquet`: the `text_field` column of a `.parquet` file, read in record batches.
- `hf`: a folder written by `datasets.Dataset.save_to_disk` (memory-mapped arrow).
- `npy`: OLMo-style token files (`.npy`): raw uint16/uint32 ids with EOS between documents, with
  or without a numpy header. These are tokens, not text: `midtrain.data.store` maps them zero-copy.
- `megatron`: a Megatron indexed dataset, named by its `.idx`, its `.bin` or the prefix of the pair
  (`data/megatron.py`); tokens too.

Folders are walked recursively in sorted order and every file of a known kind is read; other files
are ignored. Whitespace-only documents are skipped. A reader yields (where, text) per document;
every reader raises a one-line `MidtrainError` naming the file (and line) on malformed input, so
`scan_inputs` validates a source before anything is written (and, in the same pass, counts the
tokenizer's special-token strings written in the text).
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from midtrain.errors import MidtrainError
from midtrain.io import hash_file, hash_obj, hash_tree

TOKEN_KINDS = ("npy", "megatron")  # inputs that are token ids already: one per source
TextReader = Callable[[Path, str], Iterator[tuple[str, str]]]  # (where, text) per document


@dataclass(frozen=True)
class Reader:
    kind: str
    suffixes: tuple[str, ...]  # file name endings this reader claims ("" for folders)
    read: TextReader | None  # None for token inputs (npy)


@dataclass(frozen=True)
class Input:
    kind: str
    path: Path


@dataclass(frozen=True)
class Scan:
    """What a validating pass over a source's text inputs found."""

    inputs: list[Input]
    n_docs: int
    input_hash: str
    special: dict[str, int] = field(default_factory=dict)  # special-token strings found as text
    first_special: tuple[str, str] | None = None  # (where, token) of the first one


def _open(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _decode(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise MidtrainError(
            f"{where}: not valid UTF-8 (byte {e.start}); re-encode it as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def read_txt(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    with _open(path) as f:
        yield str(path), _decode(f.read(), str(path))


def read_jsonl(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    with _open(path) as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path} line {n}"
            line = _decode(raw, where)
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise MidtrainError(f"{where}: invalid JSON ({e.msg}); fix or remove it") from None
            if not isinstance(obj, dict) or text_field not in obj:
                fields = ", ".join(sorted(obj)) if isinstance(obj, dict) else type(obj).__name__
                raise MidtrainError(
                    f'{where}: no "{text_field}" field (has: {fields}); '
                    "pass --text-field NAME to read another field"
                )
            yield where, _as_text(obj[text_field], where, text_field)


def _as_text(value: object, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MidtrainError(
            f'{where}: "{field}" is a {type(value).__name__}, not a string; '
            "pass --text-field NAME naming a text field"
        )
    return value


def _check_column(names: list[str], where: Path, text_field: str) -> None:
    if text_field not in names:
        raise MidtrainError(
            f'{where}: no "{text_field}" column (has: {", ".join(names)}); '
            "pass --text-field NAME to read another column"
        )


def read_parquet(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise MidtrainError(f"{path}: not a readable parquet file ({e})") from None
    _check_column(pf.schema_arrow.names, path, text_field)
    row = 0
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for v in batch.column(0).to_pylist():
            row += 1
            yield f"{path} row {row}", _as_text(v, str(path), text_field)


def read_hf(path: Path, text_field: str) -> Iterator[tuple[str, str]]:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        raise MidtrainError(
            f"{path} is a DatasetDict with splits {sorted(ds)}; pass one split's folder, "
            f"e.g. {path / sorted(ds)[0]}"
        )
    _check_column(list(ds.column_names), path, text_field)
    row = 0
    for batch in ds.select_columns([text_field]).iter(batch_size=1024):
        for v in batch[text_field]:
            row += 1
            yield f"{path} row {row}", _as_text(v, str(path), text_field)


READERS: dict[str, Reader] = {
    r.kind: r
    for r in (
        Reader("txt", (".txt", ".txt.gz"), read_txt),
        Reader("jsonl", (".jsonl", ".jsonl.gz"), read_jsonl),
        Reader("parquet", (".parquet",), read_parquet),
        Reader("hf", (), read_hf),
        Reader("npy", (".npy",), None),
        Reader("megatron", (".idx",), None),
    )
}


def is_hf_dataset_dir(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def kind_of_file(path: Path) -> str | None:
    for r in READERS.values():
        if any(path.name.endswith(s) for s in r.suffixes):
            return r.kind
    return None


def resolve_inputs(paths: list[str | Path]) -> list[Input]:
    """Expand folders and name the reader of every input (sorted, so the order is stable)."""
    if not paths:
        raise MidtrainError("no INPUT given; pass files or folders to read")
    out: list[Input] = []
    for p in map(Path, paths):
        if not p.exists() and p.with_name(p.name + ".idx").is_file():  # a Megatron PREFIX
            out.append(Input("megatron", p.with_name(p.name + ".idx")))
        elif not p.exists():
            raise MidtrainError(f"{p}: no such file or folder; check the INPUT path")
        elif p.is_dir() and is_hf_dataset_dir(p):
            out.append(Input("hf", p))
        elif p.is_dir():
            found = [
                Input(k, f)
                for f in sorted(p.rglob("*"))
                if f.is_file()
                and not any(part.startswith(".") for part in f.relative_to(p).parts)
                and (k := kind_of_file(f))
            ]
            if not found:
                known = ", ".join(s for r in READERS.values() for s in r.suffixes)
                raise MidtrainError(f"{p}: no input files in this folder (known: {known})")
            out.extend(found)
        elif (k := kind_of_file(p)) is not None:
            out.append(Input(k, p))
        elif p.suffix == ".bin":  # a Megatron .bin named for its pair (megatron.py checks the .idx)
            out.append(Input("megatron", p.with_suffix(".idx")))
        else:
            raise MidtrainError(
                f"{p}: unknown input kind; use .txt, .jsonl, .parquet, .npy, "
                "a Megatron .idx/.bin pair or a datasets save_to_disk folder"
            )
    return out


def iter_texts(inputs: list[Input], text_field: str) -> Iterator[str]:
    """Every non-blank document of every input, in order."""
    for _, text in iter_located(inputs, text_field):
        yield text


def iter_located(inputs: list[Input], text_field: str) -> Iterator[tuple[str, str]]:
    """(where, text) of every non-blank document: `where` is the file, plus `line N` of a
    JSONL file or `row N` of a parquet file or dataset (a .txt file is one document)."""
    for inp in inputs:
        read = READERS[inp.kind].read
        if read is None:
            raise MidtrainError(f"{inp.path}: holds tokens, not text; prepare it as its own source")
        try:
            for where, text in read(inp.path, text_field):
                if text.strip():
                    yield where, text
        except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupt (gzip) file
            raise MidtrainError(
                f"{inp.path}: cannot be read to the end ({type(e).__name__}: {e}); "
                "the file is truncated or corrupt: copy it again"
            ) from None


def input_hash(inputs: list[Input], text_field: str | None) -> str:
    """Content hash of the inputs (file names and bytes, not their absolute paths)."""
    parts = [
        {
            "kind": i.kind,
            "name": i.path.name,
            "sha256": hash_tree(i.path) if i.path.is_dir() else hash_file(i.path),
        }
        for i in inputs
    ]
    return hash_obj({"inputs": parts, "text_field": text_field})


def scan_inputs(
    inputs: list[Input],
    text_field: str,
    advance: Callable[[int], None] | None = None,
    special: Sequence[str] = (),
) -> Scan:
    """Read every document once: validates the inputs, counts the documents and the `special`
    strings (a tokenizer's special tokens) written in them as text, in the same pass."""
    rx = literal_pattern(special) if special else None
    counts: Counter[str] = Counter()
    first: tuple[str, str] | None = None
    n_docs = 0
    for inp in inputs:
        for where, text in iter_located([inp], text_field):
            n_docs += 1
            if advance and n_docs % 1024 == 0:
                advance(1024)
            if rx is None or not (found := rx.findall(text)):
                continue
            counts.update(found)
            if first is None:
                first = _first_place(rx, where, text, whole_file=inp.kind == "txt")
    return Scan(inputs, n_docs, input_hash(inputs, text_field), dict(counts), first)


def literal_pattern(strings: Sequence[str]) -> re.Pattern[str]:
    """A regex matching any of `strings`, built as a trie (common prefixes factored out): with
    hundreds of reserved tokens (`<|reserved_special_token_N|>`) it scans ~15x faster than a
    plain alternation, which tries every branch at each `<`. Longest match first."""
    trie: dict[str, dict] = {}
    for text in strings:
        node = trie
        for ch in text:
            node = node.setdefault(ch, {})
        node[""] = {}  # a string ends here

    def build(node: dict[str, dict]) -> str:
        alts = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        return f"(?:{body})?" if "" in node else body

    return re.compile(build(trie))


def _first_place(rx: re.Pattern[str], where: str, text: str, whole_file: bool) -> tuple[str, str]:
    """(where, token) of the first match; a .txt document gets the line number in the file."""
    m = rx.search(text)
    assert m is not None
    if whole_file:
        where = f"{where} line {text.count(chr(10), 0, m.start()) + 1}"
    return where, m.group(0)
