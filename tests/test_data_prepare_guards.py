"""`data prepare` guards: an existing store is replaced only with --force, special-token strings
in the text are refused unless --allow-special-text, and `data tokenizer` trains one BPE over
several sources."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import make_docs, train_tiny_tokenizer

from midtrain.cli import main
from midtrain.data.readers import literal_pattern
from midtrain.data.store import TokenStore
from midtrain.data.tokenizer import EOS, load_tokenizer, special_strings, tokenizer_hash


@pytest.fixture(scope="module")
def toks(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("toks")
    from midtrain.data.tokenizer import train_tokenizer

    train_tokenizer(make_docs(80, seed=5), 300, root / "other")
    return {"a": train_tiny_tokenizer(root / "a"), "b": root / "other"}


def run_cli(args: list, monkeypatch, capsys) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    cap = capsys.readouterr()
    return e.value.code, cap.out, cap.err


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def prep(src: Path, out: Path, tok: Path, *extra) -> list:
    return ["data", "prepare", src, "--name", "code", "--out", out, "--tokenizer", tok, *extra]


def one_error(code: int, err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    return lines[0]


# ------------------------------------------------------------------------------------------------
# an existing store


def test_existing_store_is_kept_without_force(toks, tmp_path, monkeypatch, capsys):
    src, out = jsonl(tmp_path / "in" / "a.jsonl", make_docs(30)), tmp_path / "data"
    assert run_cli(prep(src, out, toks["a"]), monkeypatch, capsys)[0] == 0
    old = TokenStore.open(out / "code")
    before = snapshot(tmp_path)
    line = one_error(*run_cli(prep(src, out, toks["b"]), monkeypatch, capsys)[::2])
    assert "already exists" in line and old.tokenizer_hash[:12] in line and "--force" in line
    assert snapshot(tmp_path) == before  # nothing rewritten, nothing added
    # --train-tokenizer is refused before training (no tokenizer folder is written)
    args = ["data", "prepare", src, "--name", "code", "--out", out, "--train-tokenizer"]
    line = one_error(*run_cli([*args, "--vocab-size", 300], monkeypatch, capsys)[::2])
    assert "already exists" in line and snapshot(tmp_path) == before


def test_identical_prepare_writes_nothing_and_exits_0(toks, tmp_path, monkeypatch, capsys):
    src, out = jsonl(tmp_path / "in" / "a.jsonl", make_docs(30)), tmp_path / "data"
    assert run_cli(prep(src, out, toks["a"]), monkeypatch, capsys)[0] == 0
    before = snapshot(tmp_path)
    code, printed, _ = run_cli(prep(src, out, toks["a"]), monkeypatch, capsys)
    assert code == 0 and "already prepared, identical" in printed
    assert snapshot(tmp_path) == before
    # other options (seed of the held-out split) make another store: refused
    code, _, err = run_cli(prep(src, out, toks["a"], "--seed", 1), monkeypatch, capsys)
    assert "already exists" in one_error(code, err) and snapshot(tmp_path) == before


def test_identical_npy_source_is_recognised(toks, tmp_path, monkeypatch, capsys):
    tok = load_tokenizer(toks["a"])
    ids = [i for d in make_docs(20) for i in (*tok(d)["input_ids"], tok.eos_token_id)]
    np.asarray(ids, dtype=np.uint16).tofile(tmp_path / "t.npy")
    args = prep(tmp_path / "t.npy", tmp_path / "data", toks["a"])
    assert run_cli(args, monkeypatch, capsys)[0] == 0
    before = snapshot(tmp_path)
    code, printed, _ = run_cli(args, monkeypatch, capsys)
    assert code == 0 and "already prepared, identical" in printed and snapshot(tmp_path) == before
    (tmp_path / "t.npy").write_bytes((tmp_path / "t.npy").read_bytes()[:-4])  # other tokens
    before = snapshot(tmp_path)
    assert "already exists" in one_error(*run_cli(args, monkeypatch, capsys)[::2])
    assert snapshot(tmp_path) == before


def test_force_replaces_and_warns_of_invalidated_keys(toks, tmp_path, monkeypatch, capsys):
    src, out = jsonl(tmp_path / "in" / "a.jsonl", make_docs(30)), tmp_path / "data"
    assert run_cli(prep(src, out, toks["a"]), monkeypatch, capsys)[0] == 0
    old = TokenStore.open(out / "code")
    code, printed, _ = run_cli(prep(src, out, toks["b"], "--force"), monkeypatch, capsys)
    assert code == 0
    new = TokenStore.open(out / "code")
    assert new.tokenizer_hash == tokenizer_hash(load_tokenizer(toks["b"])) != old.tokenizer_hash
    warning = next(x for x in printed.splitlines() if x.startswith("warning:"))
    assert old.tokenizer_hash[:12] in warning and new.tokenizer_hash[:12] in warning
    assert "invalidates the content keys" in warning
    assert sorted(p.name for p in out.iterdir()) == ["code"]  # no .old or temporary left


def test_a_folder_that_is_not_a_store_is_never_replaced(toks, tmp_path, monkeypatch, capsys):
    src, out = jsonl(tmp_path / "in" / "a.jsonl", make_docs(30)), tmp_path / "data"
    (out / "code").mkdir(parents=True)
    (out / "code" / "mine.txt").write_text("keep me")
    before = snapshot(tmp_path)
    code, _, err = run_cli(prep(src, out, toks["a"], "--force"), monkeypatch, capsys)
    assert "is not a token store" in one_error(code, err) and snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------------
# special-token strings in the text


def test_special_text_is_refused_naming_file_and_line(toks, tmp_path, monkeypatch, capsys):
    docs = make_docs(20)
    docs[2] += f" and then {EOS} more"
    docs[9] += EOS
    src = jsonl(tmp_path / "in" / "a.jsonl", docs)
    txt = tmp_path / "in" / "b.txt"
    txt.write_text(f"line one\nline two {EOS}\n", encoding="utf-8")
    before = snapshot(tmp_path)
    for inp, where in ((src, "a.jsonl line 3"), (txt, "b.txt line 2")):
        code, _, err = run_cli(prep(inp, tmp_path / "data", toks["a"]), monkeypatch, capsys)
        line = one_error(code, err)
        assert where in line and repr(EOS) in line and "--allow-special-text" in line
    code, _, err = run_cli(prep(src.parent, tmp_path / "data", toks["a"]), monkeypatch, capsys)
    assert f"{EOS!r} x3" in one_error(code, err)  # counted over the whole source
    args = ["data", "prepare", src, "--name", "s", "--out", tmp_path / "data"]
    code, _, err = run_cli([*args, "--train-tokenizer", "--vocab-size", 300], monkeypatch, capsys)
    assert "a.jsonl line 3" in one_error(code, err)  # before training a tokenizer
    assert snapshot(tmp_path) == before


def test_allow_special_text_records_the_count(toks, tmp_path, monkeypatch, capsys):
    docs = make_docs(20)
    docs[2] += f" {EOS} x {EOS}"
    src = jsonl(tmp_path / "a.jsonl", docs)
    args = prep(src, tmp_path / "data", toks["a"], "--allow-special-text", "--heldout-fraction", 0)
    code, printed, _ = run_cli(args, monkeypatch, capsys)
    assert code == 0 and f"{EOS} x2" in printed
    store = TokenStore.open(tmp_path / "data" / "code")
    assert store.manifest["special_text"] == {EOS: 2}
    # kept as the tokenizer reads it: the EOS id, so the document is split (what the flag allows)
    assert int(np.count_nonzero(np.asarray(store.train_tokens()) == store.eos_id)) == 22
    clean = jsonl(tmp_path / "clean.jsonl", make_docs(20))
    args = ["data", "prepare", clean, "--name", "c", "--out", tmp_path / "data"]
    assert run_cli([*args, "--tokenizer", toks["a"]], monkeypatch, capsys)[0] == 0
    assert TokenStore.open(tmp_path / "data" / "c").manifest["special_text"] == {}  # scanned: none


def test_special_strings_are_the_tokenizers_special_tokens(toks, tmp_path):
    tok = load_tokenizer(toks["a"])
    assert special_strings(tok) == [EOS]
    tok.add_tokens(["zzword", "   "])  # ordinary added text: not special
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    assert special_strings(tok) == [EOS, "<|im_start|>", "<|im_end|>"]  # longest first


def test_literal_pattern_counts_overlapping_prefixes():
    words = ["<|a|>", "<|ab|>", "<|reserved_1|>", "<|reserved_12|>", "<s>", "</s>", "a.b"]
    rx = literal_pattern(words)
    text = "<|ab|> <|a|><s></s> <|reserved_12|><|reserved_1|> a.b axb <|abc|> <|reserved_123|>"
    assert rx.findall(text) == [
        "<|ab|>", "<|a|>", "<s>", "</s>", "<|reserved_12|>", "<|reserved_1|>", "a.b",
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# tokenizers


def test_data_tokenizer_trains_over_several_sources(toks, tmp_path, monkeypatch, capsys):
    web = jsonl(tmp_path / "web" / "w.jsonl", ["qqqqqqqq rrrr " * 20] * 30)
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    for i in range(30):
        (code_dir / f"{i}.txt").write_text("zzzzzzzz yyyy " * 20, encoding="utf-8")
    out = tmp_path / "tok"
    code, printed, _ = run_cli(
        ["data", "tokenizer", web, code_dir, "--out", out, "--vocab-size", 300],
        monkeypatch,
        capsys,
    )
    assert code == 0 and f"tokenizer: {out}" in printed and "60 documents of 31 inputs" in printed
    vocab = load_tokenizer(out).get_vocab()
    assert "qqqqqqqq" in vocab and "zzzzzzzz" in vocab  # learnt from both sources
    for src, name in ((web, "web"), (code_dir, "code")):
        args = ["data", "prepare", src, "--name", name, "--out", tmp_path / "data"]
        assert run_cli([*args, "--tokenizer", out], monkeypatch, capsys)[0] == 0
    hashes = {TokenStore.open(tmp_path / "data" / n).tokenizer_hash for n in ("web", "code")}
    assert hashes == {tokenizer_hash(load_tokenizer(out))}


@pytest.mark.parametrize(
    "case",
    ["out exists", "vocab too small", "npy input", "bad line", "no documents"],
)
def test_data_tokenizer_bad_input(case, tmp_path, monkeypatch, capsys):
    src = jsonl(tmp_path / "in" / "a.jsonl", make_docs(10))
    out, extra = tmp_path / "tok", []
    if case == "out exists":
        out.mkdir()
    elif case == "vocab too small":
        extra = ["--vocab-size", 100]
    elif case == "npy input":
        np.arange(5, dtype=np.uint16).tofile(tmp_path / "in" / "t.npy")
    elif case == "bad line":
        src.write_text(src.read_text() + "{oops\n")
    else:
        src.write_text("\n")
    before = snapshot(tmp_path)
    code, _, err = run_cli(
        ["data", "tokenizer", src.parent, "--out", out, *extra], monkeypatch, capsys
    )
    line = one_error(code, err)
    expected = {
        "out exists": "already exists",
        "vocab too small": "--vocab-size 100",
        "npy input": "t.npy: holds tokens",
        "bad line": "a.jsonl line 11",
        "no documents": "no documents",
    }[case]
    assert expected in line and snapshot(tmp_path) == before


def test_train_tokenizer_prints_where_it_went(tmp_path, monkeypatch, capsys):
    src = jsonl(tmp_path / "a.jsonl", make_docs(30))
    args = ["data", "prepare", src, "--name", "s", "--out", tmp_path / "data", "--train-tokenizer"]
    code, printed, _ = run_cli([*args, "--vocab-size", 300], monkeypatch, capsys)
    assert code == 0
    assert f"tokenizer: {tmp_path / 'data' / 'tokenizer'}" in printed
    assert "midtrain data tokenizer" in printed
