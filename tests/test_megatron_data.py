"""Megatron `.bin/.idx` datasets as inputs of `data prepare`: in place, held-out split, bad pairs.

The datasets are written by megatron-core's own `IndexedDatasetBuilder`: tests/fixtures/megatron
was made once with megatron-core 0.19.2 (scripts/make_megatron_fixtures.py; docs.json lists every
document's ids as given to the builder), because megatron-core needs Python >= 3.12 and this
project's CI runs 3.11. Where megatron-core loads (tests/_megatron.py), the last test writes a
fresh dataset with it and reads it back with its own `IndexedDataset`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _cli import run_cli
from _data_fixtures import train_tiny_tokenizer
from _megatron import FIXTURES, megatron_datasets

from midtrain.data.prepare import prepare_source
from midtrain.data.store import ManifestRecord, TokenStore

DOCS = json.loads((FIXTURES / "docs.json").read_text())


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tok")  # 320 ids, EOS = 0


def copy_pair(name: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for ext in (".bin", ".idx"):
        shutil.copy(FIXTURES / f"{name}{ext}", dest / f"{name}{ext}")
    return dest / name


def test_eod_dataset_is_read_in_place_with_the_final_documents_held_out(tmp_path, tok_dir):
    prefix = copy_pair("eod", tmp_path / "meg")
    store = prepare_source("m", [Path(f"{prefix}.idx")], tmp_path / "m", tok_dir,
                           heldout_fraction=0.25, progress=False)  # fmt: skip
    docs = DOCS["eod"]  # 12 documents, each ending with EOD 0
    assert store.n_heldout_docs == 3 and store.n_train_docs == 9
    assert store.train_file == Path(f"{prefix}.bin").resolve()  # zero-copy: the .bin itself
    assert not (store.path / "train.bin").exists()
    want = np.concatenate(docs[:9])
    assert store.dtype == np.uint16 and store.n_train_tokens == len(want)
    assert np.array_equal(store.train_tokens(), want)
    raw = np.fromfile(f"{prefix}.bin", dtype=np.uint16)[: len(want)]  # byte-identical
    assert store.train_tokens().tobytes() == raw.tobytes()
    assert [d.tolist() for d in store.heldout_docs()] == [d[:-1] for d in docs[9:]]
    assert store.manifest["megatron"] == {"prefix": str(prefix.resolve()), "dtype": "uint16"}
    assert set(store.manifest) == ManifestRecord.__optional_keys__ - {"text_field", "special_text"}
    store.verify()  # the content hash recomputes from the files


def test_int32_dataset_without_eod_is_copied_with_eos_after_each_document(tmp_path, tok_dir):
    prefix = copy_pair("split", tmp_path / "meg")
    store = prepare_source("s", [Path(f"{prefix}.bin")], tmp_path / "s", tok_dir,
                           heldout_fraction=0.2, progress=False)  # fmt: skip
    docs = DOCS["split"]  # 9 documents of 2 sequences each, no EOD, int32 ids
    assert store.n_heldout_docs == 2 and store.n_train_docs == 7
    assert store.train_file == store.path / "train.bin" and store.dtype == np.uint32
    assert store.train_tokens().tolist() == [t for d in docs[:7] for t in (*d, 0)]
    assert [d.tolist() for d in store.heldout_docs()] == docs[7:]
    store.verify()


def test_cli_takes_the_prefix_and_says_identical_the_second_time(
    tmp_path, tok_dir, monkeypatch, capsys
):
    prefix = copy_pair("eod", tmp_path / "meg")
    args = ["data", "prepare", prefix, "--name", "meg", "--out", tmp_path / "out",
            "--tokenizer", tok_dir]  # fmt: skip
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0, err
    assert TokenStore.open(tmp_path / "out" / "meg").n_train_docs == 12 - 1  # round(0.12) -> 1
    code, out, err = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "already prepared, identical" in " ".join(out.split())
    moved = copy_pair("eod", tmp_path / "elsewhere")  # same bytes, but the store reads the old .bin
    code, out, err = run_cli([*args[:2], moved, *args[3:]], monkeypatch, capsys)
    assert code == 2 and "already exists" in err and "--force" in err


def _corrupt_magic(prefix: Path) -> None:
    data = bytearray(Path(f"{prefix}.idx").read_bytes())
    data[:7] = b"NOTMEGA"
    Path(f"{prefix}.idx").write_bytes(bytes(data))


def _truncate_bin(prefix: Path) -> None:
    b = Path(f"{prefix}.bin")
    b.write_bytes(b.read_bytes()[:-4])


def _other_bin(prefix: Path) -> None:
    shutil.copy(FIXTURES / "split.bin", f"{prefix}.bin")  # the .idx of eod with split's .bin


def _truncate_idx(prefix: Path) -> None:
    i = Path(f"{prefix}.idx")
    i.write_bytes(i.read_bytes()[:-8])


def _no_idx(prefix: Path) -> None:
    Path(f"{prefix}.idx").unlink()


BAD = {
    "bad magic": (_corrupt_magic, "eod.idx: not a Megatron index"),
    ".bin shorter than the .idx says": (_truncate_bin, "eod.bin: 378 bytes, but eod.idx says 191"),
    ".idx of another .bin": (_other_bin, "eod.bin: 672 bytes, but eod.idx says 191 uint16 ids"),
    "truncated .idx": (_truncate_idx, "eod.idx: 274 bytes, but its header promises 12 sequences"),
    "no .idx": (_no_idx, "eod.idx: missing"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_pair_is_one_line_exit_2_nothing_written(
    case, tmp_path, tok_dir, monkeypatch, capsys
):
    spoil, expect = BAD[case]
    prefix = copy_pair("eod", tmp_path / "meg")
    spoil(prefix)
    given = Path(f"{prefix}.bin") if case == "no .idx" else Path(f"{prefix}.idx")
    out = tmp_path / "out"
    args = ["data", "prepare", given, "--name", "m", "--out", out, "--tokenizer", tok_dir]
    code, _, err = run_cli(args, monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert expect in lines[0] and "; " in lines[0], lines[0]
    assert not out.exists()


def test_ids_beyond_the_vocabulary_name_the_position(tmp_path, tok_dir, monkeypatch, capsys):
    prefix = copy_pair("eod", tmp_path / "meg")
    ids = np.fromfile(f"{prefix}.bin", dtype=np.uint16)
    ids[20] = 4000  # the tokenizer has 320 ids
    ids.tofile(f"{prefix}.bin")
    args = ["data", "prepare", f"{prefix}.idx", "--name", "m", "--out", tmp_path / "out",
            "--tokenizer", tok_dir]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "eod.bin: token id 4000 at position 20 is beyond the vocabulary" in err
    assert "(320 ids); pass the tokenizer the dataset was made with" in err
    assert not (tmp_path / "out").exists()


def test_a_pair_is_the_only_input_of_its_source(tmp_path, tok_dir, monkeypatch, capsys):
    prefix = copy_pair("eod", tmp_path / "meg")
    (tmp_path / "t.txt").write_text("some text")
    args = ["data", "prepare", f"{prefix}.idx", tmp_path / "t.txt", "--name", "m",
            "--out", tmp_path / "out", "--tokenizer", tok_dir]  # fmt: skip
    code, _, err = run_cli(args, monkeypatch, capsys)
    assert code == 2 and "a Megatron .bin/.idx pair must be the only input" in err


def test_fresh_dataset_from_megatron_core_reads_back_as_megatron_reads_it(tmp_path, tok_dir):
    found = megatron_datasets()
    if found is None:
        pytest.skip("megatron-core not loadable here (tests/_megatron.py); fixtures cover it")
    import torch

    ix, _ = found
    rng = np.random.default_rng(7)
    docs = [rng.integers(1, 320, size=int(rng.integers(1, 50))).tolist() + [0] for _ in range(40)]
    builder = ix.IndexedDatasetBuilder(str(tmp_path / "fresh.bin"), dtype=np.uint16)
    for d in docs:
        builder.add_document(torch.tensor(d), [len(d)])
    builder.finalize(str(tmp_path / "fresh.idx"))
    theirs = ix.IndexedDataset(str(tmp_path / "fresh"))
    store = prepare_source("f", [tmp_path / "fresh"], tmp_path / "f", tok_dir,
                           heldout_fraction=0.1, progress=False)  # fmt: skip
    assert store.n_heldout_docs == 4
    want = np.concatenate([theirs[i] for i in range(36)])
    assert store.train_tokens().tobytes() == want.astype(np.uint16).tobytes()
    assert [d.tolist() for d in store.heldout_docs()] == [theirs[i][:-1].tolist()
                                                          for i in range(36, 40)]  # fmt: skip
