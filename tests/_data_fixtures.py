"""Generated data for the data/mixture tests: documents, tokenizers and synthetic stores."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from midtrain.data.prepare import write_store
from midtrain.data.store import TokenStore

WORDS = "alpha beta gamma delta über naïve 東京 café the of and is 42 x=1+2 def f(): return".split()
SRC_BASE = 10_000  # synthetic stores: token = SRC_BASE * (source index + 1) + window index


def make_docs(n: int, seed: int = 0) -> list[str]:
    """Varied documents (unicode, code-ish, newlines), deterministic in the seed."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n):
        words = rng.choice(WORDS, size=int(rng.integers(3, 40)))
        docs.append(f"doc {i}: " + " ".join(words) + ("\n\nmore text." if i % 3 == 0 else ""))
    return docs


def train_tiny_tokenizer(out: Path, vocab_size: int = 320) -> Path:
    from midtrain.data.tokenizer import train_tokenizer

    train_tokenizer(make_docs(300, seed=123), vocab_size, out)
    return out


def big_vocab_tokenizer(out: Path, n: int = 70_000) -> Path:
    """A word-level HF tokenizer with more than 65536 ids (built in well under a second)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"w{i}": i + 1 for i in range(n - 1)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    tok.save_pretrained(out)
    return out


def synthetic_store(
    root: Path, name: str, index: int, n_windows: int, seq_len: int, tokenizer_hash: str = "t"
) -> TokenStore:
    """A store whose window w holds the token SRC_BASE * (index + 1) + w, repeated seq_len times.

    Any sampled row then names its source and window. Not a multiple of seq_len: a tail is left.
    """
    ids = np.repeat(SRC_BASE * (index + 1) + np.arange(n_windows), seq_len)
    tail = np.full(seq_len // 2, 1)
    return write_store(
        root / name,
        name,
        [np.concatenate([ids, tail])],
        vocab_size=SRC_BASE * 6,
        eos_id=0,
        tokenizer_hash=tokenizer_hash,
    )


def decode_row(row: np.ndarray) -> tuple[int, int]:
    """(source index, window) of a row sampled from synthetic stores."""
    v = int(row[0])
    assert (row == v).all(), "a row mixes windows"
    return v // SRC_BASE - 1, v % SRC_BASE
