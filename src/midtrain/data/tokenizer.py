"""Tokenizers: train a byte-level BPE here, or load any HF tokenizer folder.

Every store records `tokenizer_hash(tok)`; the trainer and evaluator compare it with the
checkpoint's tokenizer so that ids never silently mean different strings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, hash_obj

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

EOS = "<|endoftext|>"
MIN_VOCAB = 257  # 256 byte symbols + <|endoftext|>


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, out_dir: str | Path
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and save it as a HF tokenizer folder at `out_dir`.

    `<|endoftext|>` is eos = bos = pad = unk. The folder is written atomically.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < MIN_VOCAB:
        raise MidtrainError(
            f"--vocab-size {vocab_size} is too small for a byte-level BPE; use at least {MIN_VOCAB}"
        )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=EOS, bos_token=EOS, pad_token=EOS, unk_token=EOS
    )
    with atomic_dir(out_dir) as tmp:
        tok.save_pretrained(tmp)
    return tok


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a HF tokenizer folder (a checkpoint's works too); pad = eos when pad is missing."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "tokenizer_config.json").is_file():
        raise MidtrainError(
            f"{path} is not a tokenizer folder (no tokenizer.json); pass a HF tokenizer folder "
            "or use --train-tokenizer --vocab-size N"
        )
    try:
        tok = AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except (OSError, ValueError) as e:
        raise MidtrainError(f"cannot load the tokenizer in {path}: {e}") from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise MidtrainError(f"{path} holds a slow tokenizer; save a fast one (tokenizer.json)")
    if tok.eos_token_id is None:
        raise MidtrainError(f"the tokenizer in {path} has no eos token; set eos_token in it")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_hash(tok: PreTrainedTokenizerFast) -> str:
    """sha256 over the sorted vocab and the eos/bos ids (stable across save/load).

    pad is left out on purpose: `load_tokenizer` sets pad = eos when missing, and pad never
    changes what a stored id means.
    """
    special = {k: getattr(tok, f"{k}_token_id", None) for k in ("eos", "bos")}
    return hash_obj({"vocab": sorted(tok.get_vocab().items()), "special": special})


def vocab_size(tok: PreTrainedTokenizerFast) -> int:
    """Number of ids the tokenizer can emit (base vocab plus added tokens)."""
    return max(len(tok), max(tok.get_vocab().values()) + 1)


def encode_docs(tok: PreTrainedTokenizerFast, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids per document, no special tokens added (EOS is appended by the store)."""
    core = tok.backend_tokenizer
    encs = core.encode_batch_fast(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, dtype=np.int64) for e in encs]


def decode_docs(tok: PreTrainedTokenizerFast, docs: Iterable[np.ndarray]) -> Iterator[str]:
    for ids in docs:
        yield tok.decode(
            ids.tolist(), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )
