"""`midtrain bench train`: our training loop vs `transformers.Trainer`, and utilization vs sgemm.

Everything is measured in one process, interleaved in rounds (sgemm, our loop, HF Trainer) so
that load from other processes on a shared machine hits all three alike; the medians over rounds
are reported. Both trainers train the same demo-size Llama (same init seed) on the same sequences
(one random-id token store through the mixture sampler), batch 16 x 256, AdamW (fused, weight
decay 0.1 on matrices, betas 0.9/0.95), grad clipping 1.0, constant LR, fp32.

Ours is `midtrain.train.run` end to end (sampler, loss, logging, its per-step host sync); its
tokens/s comes from the log lines of the timed steps. The headline is `compile = true` (the
option that pays off here); the eager loop is measured in the same rounds and reported beside it.
HF Trainer runs with its defaults (eager). HF's comes from step-end callbacks. The
first `warmup` steps of each are not timed (allocation, compilation).

FLOPs per token: 6·N + 6·L·seq·d (N = non-embedding + head parameters; the second term is causal
attention, QKᵀ and AV over seq/2 keys on average, forward and backward).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from midtrain.demo.pipeline import FULL as DEMO
from midtrain.io import library_versions
from midtrain.train.log import read_log

DEMO_MODEL = dict(DEMO.model)  # the demo's model, vocab, sequence length, batch and LR
VOCAB, SEQ_LEN, BATCH, LR = DEMO.vocab_size, DEMO.seq_len, DEMO.micro_batch, DEMO.base_lr
SGEMM_N = 4096


def sgemm_gflops(n: int = SGEMM_N, reps: int = 3) -> float:
    """Best of `reps` fp32 n x n matmuls, in GFLOP/s."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def _world(root: Path, n_tokens: int) -> tuple[Path, Path]:
    """A BPE tokenizer of VOCAB ids and one store of random ids tagged with its hash."""
    from midtrain.data.prepare import write_store
    from midtrain.data.tokenizer import tokenizer_hash, train_tokenizer

    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(3000)]
    texts = [" ".join(rng.choice(words, 50)) for _ in range(400)]
    tok = train_tokenizer(texts, VOCAB, root / "tokenizer")
    ids = rng.integers(1, VOCAB, size=n_tokens, dtype=np.uint16)
    write_store(
        root / "web", "web", [ids], vocab_size=VOCAB, eos_id=0, tokenizer_hash=tokenizer_hash(tok)
    )
    return root / "tokenizer", root / "web"


def _run_config(tok: Path, store: Path, steps: int, compile: bool, threads: int) -> dict:
    return {
        "model": {**DEMO_MODEL, "vocab_size": VOCAB},
        "tokenizer": str(tok),
        "stores": {"web": str(store)},
        "mix": [{"source": "web", "ratio": 1.0}],
        "tokens": steps * BATCH * SEQ_LEN,
        "seq_len": SEQ_LEN,
        "batch_tokens": BATCH * SEQ_LEN,
        "micro_batch": BATCH,
        "schedule": {"name": "constant", "start_lr": LR},
        "checkpoint_every": 0,
        "compile": compile,
        "threads": threads,
        "device": "cpu",
    }


def ours_tokens_per_s(rc: dict, out: Path, warmup: int) -> float:
    from midtrain import train

    train.run(rc, out, progress=False)
    rows = [r for r in read_log(out / "log.jsonl") if r["step"] > warmup]
    tps = BATCH * SEQ_LEN
    return len(rows) * tps / sum(tps / r["tok_s"] for r in rows)


def hf_tokens_per_s(rc: dict, out: Path, steps: int, warmup: int) -> float:
    """transformers.Trainer on the same model config, sequences, batch and optimizer."""
    import torch
    from transformers import (
        AutoModelForCausalLM,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from midtrain import train

    plan = train.plan_run(train.load_run_config(rc))
    rows = torch.from_numpy(plan.sampler.sequences(0, steps * BATCH))
    data = [{"input_ids": r, "labels": r} for r in rows]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(plan.model_config, dtype=torch.float32)
    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            ends.append(time.perf_counter())

    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-8,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        report_to=[],
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=default_data_collator,
        callbacks=[Clock()],
    )
    with contextlib.redirect_stdout(sys.stderr):  # Trainer prints its summary; keep stdout JSON
        trainer.train()
    timed = len(ends) - warmup
    return timed * BATCH * SEQ_LEN / (ends[-1] - ends[warmup - 1])


def run_bench(
    steps: int = 20, rounds: int = 3, compile: bool = True, threads: int = 0, warmup: int = 3
) -> dict[str, Any]:
    """Interleaved rounds of sgemm, our loop (eager, and compiled when `compile`), HF Trainer."""
    import torch

    from midtrain import train
    from midtrain.env import quiet_transformers
    from midtrain.train.plan import model_flops_per_token

    if threads:
        torch.set_num_threads(threads)
    quiet_transformers()
    total = steps + warmup
    series: dict[str, list[float]] = {"ours_eager": [], "ours_compiled": [], "hf": [], "sgemm": []}
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-train-") as tmp:
        root = Path(tmp)
        tok, store = _world(root, (total * BATCH + 8) * SEQ_LEN)
        for r in range(rounds):
            series["sgemm"].append(sgemm_gflops())
            for mode in ("eager", "compiled") if compile else ("eager",):
                rc = _run_config(tok, store, total, mode == "compiled", threads)
                series[f"ours_{mode}"].append(ours_tokens_per_s(rc, root / f"{mode}-{r}", warmup))
            series["hf"].append(hf_tokens_per_s(rc, root / f"hf-{r}", total, warmup))
        plan = train.plan_run(train.load_run_config(rc))
    per_token, n = model_flops_per_token(plan.model_config, SEQ_LEN)
    med = {k: statistics.median(v) for k, v in series.items() if v}
    tok_s = med["ours_compiled" if compile else "ours_eager"]
    step_gflops = per_token * tok_s / 1e9
    return {
        "tokens_per_s": round(tok_s, 1),
        "hf_trainer_tokens_per_s": round(med["hf"], 1),
        "ratio_vs_hf_trainer": round(tok_s / med["hf"], 3),
        "step_gflops": round(step_gflops, 2),
        "sgemm_gflops": round(med["sgemm"], 2),
        "utilization": round(step_gflops / med["sgemm"], 3),
        "tokens_per_s_eager": round(med["ours_eager"], 1),
        "ratio_eager_vs_hf_trainer": round(med["ours_eager"] / med["hf"], 3),
        "compile": compile,
        "rounds": {k: [round(x, 1) for x in v] for k, v in series.items() if v},
        "flops_per_token": per_token,
        "flops_formula": "6*N + 6*L*seq*d, N = non-embedding + head params",
        "n_params_flops": n,
        "model": {**DEMO_MODEL, "vocab_size": VOCAB},
        "seq_len": SEQ_LEN,
        "batch": BATCH,
        "steps_timed": steps,
        "warmup_steps": warmup,
        "threads": torch.get_num_threads(),
        "sgemm_n": SGEMM_N,
        "versions": library_versions(),
    }
