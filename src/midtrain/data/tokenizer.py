"""Tokenizers: train a byte-level BPE here (on texts, or on the inputs of several sources for
`midtrain data tokenizer`), or load any HF tokenizer folder.

Every store records `tokenizer_hash(tok)`; the trainer and evaluator compare it with the
checkpoint's tokenizer so that ids never silently mean different strings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
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


DEFAULT_VOCAB = 32768  # `midtrain data tokenizer` without --vocab-size (ids fit uint16)


@dataclass(frozen=True)
class TrainedTokenizer:
    tokenizer: PreTrainedTokenizerFast
    path: Path
    n_docs: int  # documents it was trained on
    n_files: int  # input files (a save_to_disk folder counts as one)


def train_tokenizer_on_inputs(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    vocab_size: int = DEFAULT_VOCAB,
    text_field: str = "text",
) -> TrainedTokenizer:
    """One byte-level BPE over the documents of every input (files or folders of several
    sources, read as `data prepare` reads them), saved as a HF tokenizer folder at `out_dir`.

    Every input is validated before anything is written; an existing `out_dir` is refused.
    """
    from midtrain.data import readers

    out_dir = Path(out_dir)
    if out_dir.exists():
        raise MidtrainError(
            f"--out {out_dir} already exists; choose a new folder (or prepare with "
            f"--tokenizer {out_dir} to use the tokenizer there)"
        )
    if vocab_size < MIN_VOCAB:
        raise MidtrainError(
            f"--vocab-size {vocab_size} is too small for a byte-level BPE; use at least {MIN_VOCAB}"
        )
    resolved = readers.resolve_inputs(list(inputs))
    if tokens := [i.path for i in resolved if i.kind == "npy"]:
        raise MidtrainError(f"{tokens[0]}: holds tokens, not text; a tokenizer learns from text")
    scan = readers.scan_inputs(resolved, text_field)
    if scan.n_docs == 0:
        raise MidtrainError("the inputs hold no documents; check the INPUT paths and --text-field")
    tok = train_tokenizer(readers.iter_texts(resolved, text_field), vocab_size, out_dir)
    return TrainedTokenizer(tok, out_dir, scan.n_docs, len(resolved))


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a HF tokenizer folder (a checkpoint's works too); pad = eos when pad is missing."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not path.exists():
        raise MidtrainError(
            f"{path}: no such folder; pass an existing HF tokenizer folder (a checkpoint's works) "
            "or use --train-tokenizer --vocab-size N"
        )
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


def special_strings(tok: PreTrainedTokenizerFast) -> list[str]:
    """The special tokens that `tok` reads as one special id when they appear in text (e.g.
    `<|endoftext|>` as EOS), longest first. Non-special added tokens (whitespace runs, added
    words) are ordinary text and not listed."""
    added = getattr(tok, "added_tokens_decoder", {}) or {}
    names = {*tok.all_special_tokens, *(t.content for t in added.values() if t.special)}
    core = tok.backend_tokenizer
    found = [
        t
        for t in names
        if t.strip() and core.encode(t, add_special_tokens=False).ids == [core.token_to_id(t)]
    ]
    return sorted(found, key=lambda t: (-len(t), t))


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
