"""Candidate data is plain text: `study run` (and its dry run) refuses a candidate's store that
holds the tokenizer's special tokens, from the manifest's `special_text` record or, without one,
from a scan of the store's ids; `allow_special_tokens = true` on the candidate lets it through."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from _train_fixtures import save_tiny_model, sentences, write_jsonl

from midtrain.cli import main
from midtrain.data import special
from midtrain.data.prepare import prepare_source, write_store
from midtrain.data.store import TokenStore
from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash, train_tokenizer

CHAT = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="module")
def w(tmp_path_factory) -> dict:
    """A tokenizer with two chat special tokens, a tiny Llama on it, and stores: `web` and
    `math` prepared from text (manifest record {}), `said` prepared with a chat marker written
    as text (record {'<|im_start|>': 3}), `plain` and `chat` written from ids without a record
    (`chat`: math's ids with the <|im_start|> id in four places)."""
    root = tmp_path_factory.mktemp("special")
    tok = train_tokenizer(sentences(300, 0) + sentences(200, 1, numbers=True), 300, root / "t0")
    tok.add_special_tokens({"additional_special_tokens": CHAT})
    tok.save_pretrained(root / "tok")
    tok = load_tokenizer(root / "tok")
    stores = {}
    texts = {"web": sentences(300, 0), "math": sentences(200, 1, numbers=True)}
    texts["said"] = [f"{CHAT[0]}user {t}" if i < 3 else t for i, t in enumerate(texts["math"])]
    for name, docs in texts.items():
        src = write_jsonl(root / "raw" / f"{name}.jsonl", docs)
        stores[name] = prepare_source(name, [src], root / "stores" / name, tok, progress=False,
                                      allow_special_text=name == "said")  # fmt: skip
    ids = np.asarray(stores["math"].train_tokens())
    chat = ids.copy()
    chat[[5, 50, 500, 900]] = tok.convert_tokens_to_ids(CHAT[0])
    for name, arr in (("plain", ids), ("chat", chat)):
        stores[name] = write_store(root / "stores" / name, name, [arr], vocab_size=len(tok),
                                   eos_id=tok.eos_token_id, tokenizer_hash=tokenizer_hash(tok))  # fmt: skip
    ckpt = save_tiny_model(root, "llama", str(root / "tok"))
    return {
        "root": root,
        "tok": tok,
        "ckpt": ckpt,
        "stores": {k: v.path for k, v in stores.items()},
    }


def study(w: dict, tmp: Path, candidate: str, allow: bool = False) -> Path:
    stores = "".join(f'{k} = "{v}"\n' for k, v in w["stores"].items())
    text = (
        f'name = "s"\ncheckpoint = "{w["ckpt"]}"\ntokens = 256\nseq_len = 32\n'
        "batch_tokens = 128\nmicro_batch = 2\nseeds = [0]\n"
        f"[stores]\n{stores}[base]\nweb = 1.0\n[schedule]\nstart_lr = 1e-3\n"
        f'[eval]\ndomains = ["web"]\n[[candidates]]\nname = "cand"\nmix = {{ {candidate} = 1.0 }}\n'
        f"max_repetition = 50.0\n{'allow_special_tokens = true' if allow else ''}\n"
    )
    (tmp / "study.toml").write_text(text)
    return tmp / "study.toml"


def dry_run(path: Path, out: Path, monkeypatch, capsys) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["midtrain", "study", "run", str(path), "--out", str(out),
                                      "--dry-run"])  # fmt: skip
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def files(*roots: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns)
            for r in roots for p in sorted(r.rglob("*"))}  # fmt: skip


@pytest.mark.parametrize(
    "store, how",
    [("chat", "'<|im_start|>' x4 (found by a scan of its token ids)"),
     ("said", "'<|im_start|>' x3 (counted in its manifest's special_text)")],
)  # fmt: skip
def test_a_candidate_store_with_special_tokens_is_refused_unless_allowed(
    w, tmp_path, monkeypatch, capsys, store, how
):
    path = study(w, tmp_path, store)
    before, world = files(tmp_path), files(w["root"])
    code, err = dry_run(path, tmp_path / "out", monkeypatch, capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: study.toml: candidates[0].mix.{store}: store "), lines[0]
    assert how in lines[0] and "allow_special_tokens = true" in lines[0]
    assert files(tmp_path) == before and files(w["root"]) == world  # nothing written
    path = study(w, tmp_path, store, allow=True)
    code, err = dry_run(path, tmp_path / "out", monkeypatch, capsys)
    assert code == 0, err
    assert f"warning: candidates[0].mix.{store}: " in err and "allowed by" in err


@pytest.mark.parametrize("store", ["math", "plain"])
def test_a_clean_candidate_store_passes(w, tmp_path, monkeypatch, capsys, store):
    code, err = dry_run(study(w, tmp_path, store), tmp_path / "out", monkeypatch, capsys)
    assert code == 0 and "special tokens" not in err, err


def test_prepare_records_a_clean_scan_and_the_id_scan_counts_in_chunks(w, monkeypatch):
    math, said = (TokenStore.open(w["stores"][n]) for n in ("math", "said"))
    assert math.manifest["special_text"] == {} and said.manifest["special_text"] == {CHAT[0]: 3}
    chat = TokenStore.open(w["stores"]["chat"])
    assert "special_text" not in chat.manifest
    wanted = special.special_ids(w["tok"], chat.eos_id)
    assert sorted(wanted.values()) == sorted(CHAT)  # EOS, the document end, is not looked for
    monkeypatch.setattr(special, "SCAN_CHUNK", 7)  # many chunks, some hits on their edges
    assert special.store_special_counts(chat, w["tok"]).counts == {CHAT[0]: 4}
    assert special.store_special_counts(chat, None) is None  # a scan needs the tokenizer
    # the ids a scan finds in a prepared store agree with the count its manifest recorded
    assert special.count_ids(said.train_tokens(), wanted, said.vocab_size) == {CHAT[0]: 3}
