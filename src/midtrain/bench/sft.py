"""`midtrain bench sft`: SFT tokens/s ÷ anneal tokens/s on the same model, in one process.

Both loops fine-tune the same saved demo-size Llama (the model, tokenizer, batch 16 x 256 and LR
of `bench train`), eager, fp32, interleaved in rounds so that load from other processes hits both
alike; medians over rounds are reported. The anneal is `midtrain.train.run` on one random-id token
store; the SFT is one grid point of `midtrain.sft` end to end (JSONL rows rendered, tokenised,
masked, batched) on rows whose long prompts are cut from the left to exactly 256 tokens, so
neither loop pads and both count the same tokens per step. Each side's tokens/s comes from the
log lines of its timed steps (the first `warmup` steps are not timed).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.bench.train import BATCH, DEMO_MODEL, LR, SEQ_LEN, VOCAB, _run_config, _world
from midtrain.io import library_versions
from midtrain.train.log import read_log


def _checkpoint(root: Path, tok: Path) -> Path:
    """The demo-size model, initialised with seed 0, saved with the tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from midtrain import train
    from midtrain.data.tokenizer import load_tokenizer

    plan = train.plan_run(train.load_run_config(_run_config(tok, root / "web", 1, False, 0)))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(plan.model_config, dtype=torch.float32)
    model.save_pretrained(root / "ckpt")
    load_tokenizer(tok).save_pretrained(root / "ckpt")
    return root / "ckpt"


def _rows(path: Path, n: int) -> Path:
    """Rows of random words whose prompts are far longer than the sequence (cut to fit)."""
    rng = np.random.default_rng(1)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(3000)]
    rows = [{"prompt": " ".join(rng.choice(words, 400)), "response": " ".join(rng.choice(words, 30))}
            for _ in range(n)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _timed_tokens_per_s(log: Path, warmup: int) -> float:
    rows = [r for r in read_log(log) if r["step"] > warmup]
    tps = BATCH * SEQ_LEN
    return len(rows) * tps / sum(tps / r["tok_s"] for r in rows)


def anneal_tokens_per_s(ckpt: Path, store: Path, steps: int, out: Path, warmup: int,
                        threads: int) -> float:  # fmt: skip
    from midtrain import train

    rc = _run_config(ckpt, store, steps, False, threads)
    rc = {**rc, "init": str(ckpt), "tokenizer": None, "model": None}
    rc["schedule"] = {"name": "constant", "start_lr": LR}
    train.run(rc, out, progress=False)
    return _timed_tokens_per_s(out / "log.jsonl", warmup)


def sft_tokens_per_s(plan: Any, out: Path, warmup: int) -> tuple[float, int]:
    """One grid point's fine-tune; (timed tokens/s, tokens per step it trained)."""
    from midtrain.sft.run import run_one

    run_one(plan, LR, out, progress=False)
    return _timed_tokens_per_s(out / "log.jsonl", warmup), plan.tokens_per_step


def run_bench(steps: int = 20, rounds: int = 3, threads: int = 0, warmup: int = 3) -> dict:
    """Interleaved rounds: the anneal loop, then the SFT loop, on the same checkpoint."""
    import torch

    from midtrain.env import quiet_transformers
    from midtrain.sft import load_sft_config, plan_sft

    if threads:
        torch.set_num_threads(threads)
    quiet_transformers()
    total = steps + warmup
    series: dict[str, list[float]] = {"anneal": [], "sft": []}
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-sft-") as tmp:
        root = Path(tmp)
        tok, store = _world(root, (total * BATCH + 8) * SEQ_LEN)
        ckpt = _checkpoint(root, tok)
        cfg = load_sft_config({
            "checkpoint": str(ckpt), "data": str(_rows(root / "train.jsonl", total * BATCH)),
            "val": str(_rows(root / "val.jsonl", BATCH)), "lrs": [LR], "epochs": 1,
            "batch_size": BATCH, "micro_batch": BATCH, "seq_len": SEQ_LEN, "warmup_fraction": 0,
            "schedule": "constant", "checkpoint_every": 0, "threads": threads, "device": "cpu",
        })  # fmt: skip
        plan = plan_sft(cfg)
        summary = plan.summary()
        for r in range(rounds):
            series["anneal"].append(
                anneal_tokens_per_s(ckpt, store, total, root / f"anneal-{r}", warmup, threads)
            )
            tps, per_step = sft_tokens_per_s(plan, root / f"sft-{r}", warmup)
            series["sft"].append(tps)
    med = {k: statistics.median(v) for k, v in series.items()}
    return {
        "ratio_sft_vs_anneal": round(med["sft"] / med["anneal"], 3),
        "sft_tokens_per_s": round(med["sft"], 1),
        "anneal_tokens_per_s": round(med["anneal"], 1),
        "rounds": {k: [round(x, 1) for x in v] for k, v in series.items()},
        "sft_tokens_per_step": per_step,
        "sft_pad_fraction": summary.pad_fraction,
        "sft_truncated_examples": summary.truncated,
        "model": {**DEMO_MODEL, "vocab_size": VOCAB},
        "seq_len": SEQ_LEN,
        "batch": BATCH,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
