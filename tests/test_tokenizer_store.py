"""Tokenizer and token stores: every input format, held-out split, zero-copy .npy, reproducibility."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import big_vocab_tokenizer, make_docs, train_tiny_tokenizer

from midtrain.data import encode as encode_mod
from midtrain.data import prepare as store_mod
from midtrain.data.prepare import prepare_source
from midtrain.data.store import (
    HeldoutRecord,
    ManifestRecord,
    TokenStore,
    TrainRecord,
    heldout_count,
)
from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

DOCS = make_docs(60, seed=1)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer")


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def write_inputs(kind: str, root: Path, docs: list[str]) -> Path:
    """The same documents in one input format."""
    root.mkdir(parents=True, exist_ok=True)
    if kind == "txt":
        for i, d in enumerate(docs):
            (root / f"{i:04d}.txt").write_text(d, encoding="utf-8")
        (root / "notes.md").write_text("ignored: not a known kind")
        return root
    if kind in ("jsonl", "jsonl.gz"):
        text = "".join(json.dumps({"id": i, "text": d}) + "\n" for i, d in enumerate(docs))
        p = root / f"d.{kind}"
        p.write_bytes(
            gzip.compress(text.encode(), mtime=0) if kind.endswith("gz") else text.encode()
        )
        return p
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": docs}), root / "d.parquet", row_group_size=17)
        return root / "d.parquet"
    if kind == "hf":
        import datasets

        datasets.disable_progress_bars()
        datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(root / "ds"))
        return root / "ds"
    raise AssertionError(kind)


def decoded_split(store: TokenStore, tok) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) decoded back to text."""
    ids = np.asarray(store.train_tokens())
    cuts = np.flatnonzero(ids == store.eos_id)
    train = [tok.decode(d.tolist()) for d in np.split(ids, cuts + 1)[:-1]]
    train = [t.removesuffix(tok.eos_token) for t in train]
    held = [tok.decode(d.tolist()) for d in store.heldout_docs()]
    return train, held


def test_tokenizer_roundtrip_and_hash(tmp_path, tok_dir, tok):
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    assert len(tok) == 320
    for d in DOCS[:5]:
        assert tok.decode(tok(d)["input_ids"]) == d  # byte-level BPE: lossless
    again = load_tokenizer(tok_dir)
    assert tokenizer_hash(again) == tokenizer_hash(tok)
    other = train_tokenizer(make_docs(50, seed=9), 300, tmp_path / "other")
    assert tokenizer_hash(other) != tokenizer_hash(tok)


@pytest.mark.parametrize("kind", ["txt", "jsonl", "jsonl.gz", "parquet", "hf"])
def test_each_text_format_round_trips(tmp_path, tok, kind):
    src = write_inputs(kind, tmp_path / "in", DOCS)
    store = prepare_source(
        "s", [src], tmp_path / "store", tok, heldout_fraction=0.1, seed=0, progress=False
    )
    train, held = decoded_split(store, tok)
    assert len(held) == heldout_count(len(DOCS), 0.1) == 6
    assert sorted(train + held) == sorted(DOCS)
    assert train == [d for d in DOCS if d not in held]  # input order is kept
    assert list(store.heldout_bytes()) == [len(h.encode("utf-8")) for h in held]
    m = store.manifest
    assert (m["train"]["n_docs"], m["heldout"]["n_docs"], store.dtype) == (54, 6, np.uint16)
    assert m["heldout"]["n_bytes"] == sum(len(h.encode()) for h in held)
    assert set(m) == ManifestRecord.__optional_keys__ - {"megatron"}  # the type names every key
    assert (set(m["train"]), set(m["heldout"])) == (
        TrainRecord.__required_keys__,
        HeldoutRecord.__required_keys__,
    )
    assert store.n_train_tokens == len(store.train_tokens())
    store.verify()


def test_heldout_split_is_fixed_by_seed_and_fraction(tmp_path, tok):
    src = write_inputs("jsonl", tmp_path / "in", DOCS)

    def held(seed: int, frac: float, name: str) -> list[str]:
        s = prepare_source("s", [src], tmp_path / name, tok, heldout_fraction=frac, seed=seed)
        return decoded_split(s, tok)[1]

    assert held(0, 0.2, "a") == held(0, 0.2, "b")
    assert held(0, 0.2, "a") != held(1, 0.2, "c")
    assert len(held(0, 0.25, "d")) == 15 and held(0, 0.0, "e") == []


def test_streaming_batches_give_the_same_store(tmp_path, tok, monkeypatch):
    src = write_inputs("jsonl", tmp_path / "in", DOCS)
    one = prepare_source("s", [src], tmp_path / "one", tok, heldout_fraction=0.1)
    monkeypatch.setattr(store_mod, "ENCODE_BATCH_DOCS", 7)  # many small batches
    for threads in (1, 3):  # encoded on threads, written in input order
        monkeypatch.setattr(encode_mod, "encode_threads", lambda n=threads: n)
        many = prepare_source("s", [src], tmp_path / f"many{threads}", tok, heldout_fraction=0.1)
        assert_same_tree(one.path, many.path)


def assert_same_tree(a: Path, b: Path) -> None:
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def test_identical_inputs_give_identical_stores_and_changes_change_hashes(tmp_path, tok):
    a = prepare_source("s", [write_inputs("txt", tmp_path / "a", DOCS)], tmp_path / "sa", tok)
    b = prepare_source("s", [write_inputs("txt", tmp_path / "b", DOCS)], tmp_path / "sb", tok)
    assert_same_tree(a.path, b.path)  # manifest included: no timestamps, no absolute paths
    changed = [*DOCS[:-1], DOCS[-1] + "!"]
    c = prepare_source("s", [write_inputs("txt", tmp_path / "c", changed)], tmp_path / "sc", tok)
    assert c.input_hash != a.input_hash and c.content_hash != a.content_hash
    again = prepare_source("s", [tmp_path / "a"], tmp_path / "sa", tok)  # replaces in place
    assert again.content_hash == a.content_hash


def write_olmo_npy(path: Path, tok, docs: list[str], header: bool, trailing_eos: bool = True):
    ids = np.concatenate([np.append(tok(d)["input_ids"], tok.eos_token_id) for d in docs])
    ids = ids if trailing_eos else ids[:-1]
    arr = ids.astype(np.uint16)
    if header:
        np.save(path, arr)
    else:
        arr.tofile(path)
    return arr


@pytest.mark.parametrize("header", [False, True])
def test_npy_is_read_zero_copy(tmp_path, tok, header):
    path = tmp_path / "olmo.npy"
    arr = write_olmo_npy(path, tok, DOCS, header)
    store = prepare_source("olmo", [path], tmp_path / "store", tok, heldout_fraction=0.1)
    assert not (store.path / "train.bin").exists()  # nothing copied
    train = store.train_tokens()
    assert isinstance(train, np.memmap) and Path(train.filename) == path.resolve()
    assert not train.flags.writeable
    header_bytes = path.stat().st_size - arr.nbytes
    assert store.manifest["train"]["offset"] == header_bytes
    in_file = np.memmap(path, dtype=np.uint16, mode="r", offset=header_bytes)
    assert np.array_equal(train, in_file[: len(train)])
    train_docs, held = decoded_split(store, tok)
    assert held == DOCS[-6:]  # the final documents of the file are held out
    assert train_docs == DOCS[:-6]
    assert list(store.heldout_bytes()) == [len(d.encode()) for d in DOCS[-6:]]
    store.verify()


def test_npy_without_final_eos_and_big_vocab_uint32(tmp_path, tok):
    path = tmp_path / "t.npy"
    write_olmo_npy(path, tok, DOCS[:10], header=False, trailing_eos=False)
    store = prepare_source("t", [path], tmp_path / "st", tok, heldout_fraction=0.1)
    assert decoded_split(store, tok) == (DOCS[:9], DOCS[9:10])

    big = load_tokenizer(big_vocab_tokenizer(tmp_path / "big"))
    ids = np.array([5, 70_000 - 1, 0, 66_000, 7, 0], dtype=np.uint32)
    ids.tofile(tmp_path / "big.npy")  # headerless: uint32 inferred from the vocabulary
    s = prepare_source("b", [tmp_path / "big.npy"], tmp_path / "sb", big, heldout_fraction=0.0)
    assert s.dtype == np.uint32 and list(s.train_tokens()) == list(ids)
    text = prepare_source(
        "w", [write_inputs("txt", tmp_path / "w", ["w66000 w3"])], tmp_path / "sw", big
    )
    assert text.dtype == np.uint32 and list(text.train_tokens()) == [66_001, 4, 0]


def test_tokenising_streams_documents(tmp_path, tok, monkeypatch):
    """Reading, encoding and writing interleave: never the whole source in memory at once."""
    src = write_inputs("jsonl", tmp_path / "in", DOCS)
    read = {"n": 0}
    real_iter, real_encode = store_mod.readers.iter_located, store_mod.encode_docs

    def counting_iter(inputs, field):  # both passes (scan and encode) read through it
        for doc in real_iter(inputs, field):
            read["n"] += 1
            yield doc

    seen: list[int] = []

    def spying_encode(tk, texts):
        seen.append(read["n"])
        return real_encode(tk, texts)

    monkeypatch.setattr(store_mod, "ENCODE_BATCH_DOCS", 7)
    monkeypatch.setattr(store_mod.readers, "iter_located", counting_iter)
    monkeypatch.setattr(store_mod, "encode_docs", spying_encode)
    prepare_source("s", [src], tmp_path / "st", tok, heldout_fraction=0.0)
    assert len(seen) == 9  # 60 docs in batches of 7
    # batch i is encoded once read (the validating pass, 60 docs, plus 7 per batch) and before
    # more than AHEAD batches per encoding thread are read past it (threads: any order)
    ahead = encode_mod.AHEAD * encode_mod.encode_threads()
    for i, n in enumerate(sorted(seen)):
        assert len(DOCS) + min(7 * (i + 1), len(DOCS)) <= n <= len(DOCS) + 7 * (i + ahead) + 7
