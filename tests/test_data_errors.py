"""Malformed data inputs: each one line on stderr, exit code 2, and no partial output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from _data_fixtures import big_vocab_tokenizer, synthetic_store, train_tiny_tokenizer

from midtrain.cli import main


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    stores = root / "stores"
    synthetic_store(stores, "web", 0, 100, 16)
    synthetic_store(stores, "code", 1, 10, 16)
    synthetic_store(stores, "tiny", 2, 0, 16)  # less than one sequence
    return {
        "tok": train_tiny_tokenizer(root / "tok"),
        "big": big_vocab_tokenizer(root / "big"),
        "stores": stores,
    }


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def run_cli(args: list, monkeypatch, capsys, stream: str = "err") -> tuple[int, str]:
    """`midtrain ARGS` in this process through the real entry point (its exit code mapping)."""
    monkeypatch.setattr(sys, "argv", ["midtrain", *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, getattr(capsys.readouterr(), stream)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def prepare(inp: Path, w: dict[str, Path], out: Path, *extra: str) -> list:
    return ["data", "prepare", inp, "--name", "src", "--out", out, "--tokenizer", w["tok"], *extra]


def mix(w: dict[str, Path], *parts: str, tokens: int = 1600) -> list:
    args = ["data", "mix", "--stores", w["stores"], "--tokens", tokens, "--seq-len", 16]
    return args + [a for p in parts for a in ("--mix", p)]


def corrupt_store(root: Path, text: str) -> Path:
    store = root / "stores" / "broken"
    _write(store / "manifest.json", text.encode())
    return store


# name -> (build args from (world, tmp dir, out dir), expected text in the message)
CASES: dict[str, tuple[Callable[[dict, Path, Path], list], str]] = {
    "ratios not summing to 1": (
        lambda w, t, o: mix(w, "web=0.5", "code=0.4"),
        "mix[*].ratio: ratios sum to 0.9",
    ),
    "negative ratio": (lambda w, t, o: mix(w, "web=1.2", "code=-0.2"), "mix[1].ratio"),
    "unknown source": (lambda w, t, o: mix(w, "wiki=1"), "mix[0].source: unknown source 'wiki'"),
    "empty source": (
        lambda w, t, o: prepare(_write(t / "in" / "a.txt", b"  \n\n").parent, w, o),
        "no documents",
    ),
    "empty store in a mix": (
        lambda w, t, o: mix(w, "web=0.9", "tiny=0.1"),
        "mix[1].source: store 'tiny' has 8 training tokens",
    ),
    "non-UTF-8 text": (
        lambda w, t, o: prepare(_write(t / "bad.txt", "café".encode("latin-1")), w, o),
        "not valid UTF-8",
    ),
    "missing file": (lambda w, t, o: prepare(t / "nope.jsonl", w, o), "no such file"),
    "jsonl without the text field": (
        lambda w, t, o: prepare(_write(t / "d.jsonl", b'{"body": "hi"}\n'), w, o),
        'line 1: no "text" field (has: body)',
    ),
    "vocab too large for uint16 stored as uint16": (
        lambda w, t, o: [
            *prepare(_write(t / "t.npy", np.arange(9, dtype=np.uint16).tobytes()), w, o),
            "--npy-dtype",
            "uint16",
            "--tokenizer",
            w["big"],
        ],
        "cannot hold a 70000-token vocabulary",
    ),
    "corrupt manifest": (
        lambda w, t, o: ["data", "show", corrupt_store(t, '{"format": "midtrain-store/1",')],
        "manifest.json is corrupt",
    ),
    "manifest dtype too small for its vocab": (
        lambda w, t, o: [
            "data",
            "show",
            corrupt_store(
                t,
                json.dumps(
                    {
                        **json.loads((w["stores"] / "web" / "manifest.json").read_text()),
                        "vocab_size": 70_000,
                    }
                ),
            ),
        ],
        "vocab_size 70000 does not fit uint16",
    ),
    "source too small": (
        lambda w, t, o: mix(w, "web=0.5", "code=0.5", tokens=16 * 100),
        "mix[1].max_repetition: source 'code' needs 800 tokens (5.000 epochs",
    ),
    "npy ids beyond the vocabulary": (
        lambda w, t, o: prepare(_write(t / "t.npy", np.array([1, 999, 0], "<u2").tobytes()), w, o),
        "token id 999 >= vocab_size 320",
    ),
    "npy size not whole ids": (
        lambda w, t, o: prepare(_write(t / "t.npy", b"\x01\x00\x00"), w, o),
        "not a whole number of uint16 ids",
    ),
    "bad --mix syntax": (lambda w, t, o: mix(w, "web:1"), "mix[0]: 'web:1' is not SOURCE=RATIO"),
    "heldout fraction out of range": (
        lambda w, t, o: prepare(t, w, o, "--heldout-fraction", "1.5"),
        "--heldout-fraction 1.5",
    ),
    "train tokenizer on bad input": (
        lambda w, t, o: [
            "data",
            "prepare",
            _write(t / "bad.jsonl", b'{"text": "ok"}\n{"text": \n'),
            "--name",
            "src",
            "--out",
            o,
            "--train-tokenizer",
            "--vocab-size",
            "300",
        ],
        "bad.jsonl line 2: invalid JSON",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_input_is_one_line_exit_2_no_partial_output(
    case, world, tmp_path, monkeypatch, capsys
):
    build, expected = CASES[case]
    out = tmp_path / "out"
    args = build(world, tmp_path, out)
    before = tree(world["stores"])
    code, err = run_cli(args, monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert not out.exists()  # nothing half-written, not even an empty folder or a tokenizer
    assert tree(world["stores"]) == before


def test_existing_tokenizer_is_not_overwritten(world, tmp_path, monkeypatch, capsys):
    src = _write(tmp_path / "d.jsonl", b'{"text": "hello world"}\n{"text": "again"}\n')
    (tmp_path / "out" / "tokenizer").mkdir(parents=True)
    args = ["data", "prepare", src, "--name", "s", "--out", tmp_path / "out"]
    code, err = run_cli([*args, "--train-tokenizer", "--vocab-size", "300"], monkeypatch, capsys)
    assert code == 2 and "already exists; reuse it with --tokenizer" in err
    assert tree(tmp_path / "out") == ["tokenizer"]


def test_prepare_via_cli_then_a_valid_mix(world, tmp_path, monkeypatch, capsys):
    src = _write(
        tmp_path / "d.jsonl", "".join(f'{{"text": "doc {i} ü"}}\n' for i in range(50)).encode()
    )
    out = tmp_path / "data"
    args = ["data", "prepare", src, "--name", "s", "--out", out, "--train-tokenizer"]
    code, _ = run_cli([*args, "--vocab-size", "280"], monkeypatch, capsys)
    assert code == 0 and tree(out)[:2] == ["s", "s/heldout.bin"]
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    mix_args = ["data", "mix", "--stores", out, "--mix", "s=1:3", "--tokens", 512, "--seq-len", 8]
    code, printed = run_cli(mix_args, monkeypatch, capsys, stream="out")
    assert code == 0 and "epochs" in printed


def test_real_process_exit_code(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "midtrain.cli", "data", "show", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
