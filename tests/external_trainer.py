"""A stand-in for a lab's own trainer, written against transformers, torch and numpy only (it
never imports midtrain): what `[train] command` runs in tests/test_external_train.py.

    python external_trainer.py SPEC OUT [--resize N]

It reads midtrain's spec (docs/external.md), loads the start checkpoint, draws each step's
sequences from the sources' token files at their ratios (its own data order, from the seed),
trains with AdamW on the spec's per-step LRs, logs one JSON line per step to the spec's
`metrics_log`, and saves the model to OUT. `--resize N` adds N rows to the embedding before saving
(a checkpoint of another vocabulary, for the test of that error).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM


def windows(source: dict, seq_len: int) -> np.ndarray:
    """The source's training ids as non-overlapping seq_len windows (a read-only memmap)."""
    ids = np.memmap(source["tokens_file"], dtype=source["dtype"], mode="r",
                    offset=source["offset"], shape=(source["n_tokens"],))  # fmt: skip
    n = len(ids) // seq_len
    return ids[: n * seq_len].reshape(n, seq_len)


def batch(spec: dict, data: list[np.ndarray], rng: np.random.Generator) -> torch.Tensor:
    """One step's sequences: each source's share of batch_sequences (at least the remainder)."""
    n = spec["batch_sequences"]
    counts = [int(s["ratio"] * n) for s in spec["sources"]]
    for i in np.argsort(
        [-(s["ratio"] * n - c) for s, c in zip(spec["sources"], counts, strict=True)]
    ):
        if sum(counts) < n:
            counts[i] += 1
    rows = [w[rng.integers(len(w), size=c)] for w, c in zip(data, counts, strict=True) if c]
    return torch.from_numpy(np.concatenate(rows).astype(np.int64))


def main(spec_path: str, out: str, resize: int = 0) -> None:
    spec = json.load(open(spec_path))
    assert spec["format"] == "midtrain-external-spec/1", spec["format"]
    torch.manual_seed(spec["seed"])
    rng = np.random.default_rng(spec["seed"])
    model = AutoModelForCausalLM.from_pretrained(spec["checkpoint"]).train()
    o = spec["optimizer"]
    opt = torch.optim.AdamW(model.parameters(), lr=spec["schedule"]["lrs"][0],
                            betas=tuple(o["betas"]), eps=o["eps"], weight_decay=o["weight_decay"])  # fmt: skip
    data = [windows(s, spec["seq_len"]) for s in spec["sources"]]
    print(f"training {spec['steps']} steps on {[s['name'] for s in spec['sources']]}", flush=True)
    with open(spec["metrics_log"], "w") as log:
        for step, lr in enumerate(spec["schedule"]["lrs"]):
            for g in opt.param_groups:
                g["lr"] = lr
            ids = batch(spec, data, rng)
            loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), o["grad_clip"] or float("inf"))
            opt.step()
            opt.zero_grad()
            tokens = (step + 1) * spec["batch_tokens"]
            log.write(json.dumps({"step": step + 1, "tokens": tokens, "lr": lr,
                                  "loss": loss.item()}) + "\n")  # fmt: skip
    if resize:
        model.resize_token_embeddings(model.config.vocab_size + resize)
    model.save_pretrained(out)
    print(f"saved to {out}", flush=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    extra = int(args[args.index("--resize") + 1]) if "--resize" in args else 0
    main(args[0], args[1], extra)
