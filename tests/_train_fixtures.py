"""Tiny generated worlds for the trainer tests: a BPE tokenizer, two token stores, tiny models."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

SUBJECTS = ["the cat", "a dog", "the bird", "my friend", "the teacher", "a robot"]
VERBS = ["sees", "likes", "finds", "paints", "reads", "moves"]
OBJECTS = ["the ball", "a book", "the tree", "a red box", "the river", "a small car"]

TINY = {  # per architecture: HF config kwargs of a ~30k-parameter model
    "llama": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
        "tie_word_embeddings": False,
    },
    "gpt_neox": {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "gpt2": {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 64},
}


def sentences(n: int, seed: int, numbers: bool = False) -> list[str]:
    """Learnable patterned text: a tiny grammar (or simple sums) as documents."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n):
        if numbers:
            a, b = rng.randint(0, 9), rng.randint(0, 9)
            docs.append(f"{a} plus {b} is {a + b}. " * rng.randint(1, 3))
        else:
            parts = [f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}."]
            docs.append(" ".join(parts * rng.randint(1, 3)))
    return docs


def write_jsonl(path: Path, texts: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return path


def build_world(root: Path, vocab_size: int = 300) -> dict[str, Any]:
    """Tokenizer + stores `web` (sentences) and `math` (sums) under `root`."""
    from midtrain.data.prepare import prepare_source
    from midtrain.data.tokenizer import train_tokenizer

    texts = {"web": sentences(600, 0), "math": sentences(400, 1, numbers=True)}
    tok_dir = root / "tokenizer"
    tok = train_tokenizer(texts["web"] + texts["math"], vocab_size, tok_dir)
    stores = {}
    for name, docs in texts.items():
        src = write_jsonl(root / "raw" / f"{name}.jsonl", docs)
        store = prepare_source(
            name, [src], root / "stores" / name, tok, heldout_fraction=0.05, seed=0, progress=False
        )
        stores[name] = str(store.path)
    return {"root": root, "tokenizer": str(tok_dir), "stores": stores, "tok": tok}


def other_tokenizer(root: Path) -> Path:
    """A tokenizer with another vocabulary (for the mismatch error)."""
    from midtrain.data.tokenizer import train_tokenizer

    train_tokenizer(sentences(200, 7, numbers=True), 280, root / "other-tokenizer")
    return root / "other-tokenizer"


def save_tiny_model(root: Path, kind: str, tokenizer_dir: str, seed: int = 0) -> Path:
    """A randomly initialised tiny `kind` model + tokenizer saved as a HF folder (no train state)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from midtrain.data.tokenizer import load_tokenizer, vocab_size

    tok = load_tokenizer(tokenizer_dir)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    config = AutoConfig.for_model(kind, vocab_size=vocab_size(tok), **ids, **TINY[kind])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    out = root / f"tiny-{kind}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_config(world: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A tiny run: seq 32, 4 sequences per step in micro batches of 2, 8 steps."""
    rc: dict[str, Any] = {
        "stores": world["stores"],
        "mix": [
            {"source": "web", "ratio": 0.5, "max_repetition": 20.0},
            {"source": "math", "ratio": 0.5, "max_repetition": 20.0},
        ],
        "tokens": 8 * 128,
        "seq_len": 32,
        "batch_tokens": 128,
        "micro_batch": 2,
        "seed": 0,
        "threads": 1,
        "checkpoint_every": 2,
        "schedule": {"name": "linear", "start_lr": 3e-3},
    }
    rc.update(overrides)
    return rc


def pretrain_config(world: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    """A fresh tiny Llama on the constant schedule."""
    fresh = {
        "model": {"model_type": "llama", **TINY["llama"]},
        "tokenizer": world["tokenizer"],
        "schedule": {"name": "constant", "start_lr": 1e-2},
    }
    return run_config(world, **{**fresh, **overrides})
