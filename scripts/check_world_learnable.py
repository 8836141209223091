"""Train a ~1M-parameter Llama on the demo world and print task accuracy against tokens seen.

This verifies that the world's tasks are learnable by a tiny model in a few million tokens
(issue 2). It is a check, not part of the library: plain PyTorch AdamW, fp32, one thread.

    python scripts/check_world_learnable.py --world /tmp/world --tokens 3000000 --out curve.json

Accuracy is scored as lm-eval scores multiple choice (sum of the choice's token log-probs after
the prompt; acc_norm divides by the choice's length in bytes). At the end the same model is run
through `lm_eval.simple_evaluate` on the generated YAML tasks as a cross-check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from midtrain.data.tokenizer import train_tokenizer  # noqa: E402
from midtrain.demo.world import TASKS, generate_world, task_prompt  # noqa: E402

MIX = {"web": 0.5, "hq": 0.125, "flan": 0.125, "math": 0.125, "code": 0.125}


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text().splitlines()]


def encode_source(tok, texts: list[str]) -> np.ndarray:
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    return np.fromiter((t for doc in ids for t in (*doc, eos)), dtype=np.int32)


def batches(streams: dict[str, np.ndarray], seq: int, batch: int, seed: int):
    """Random windows; each sequence comes from one source drawn by the MIX ratios."""
    rng = np.random.default_rng(seed)
    names = list(MIX)
    p = np.array([MIX[n] for n in names])
    while True:
        rows = []
        for src in rng.choice(len(names), size=batch, p=p):
            s = streams[names[src]]
            i = rng.integers(0, len(s) - seq - 1)
            rows.append(s[i : i + seq + 1])
        yield torch.from_numpy(np.stack(rows).astype(np.int64))


def score_items(model, tok, task: str, items: list[dict], bs: int = 64) -> dict[str, float]:
    """lm-eval style multiple choice: sum log p(choice | prompt), acc and acc_norm."""
    reqs = []  # (item index, choice index, context ids, continuation ids, choice bytes)
    for i, it in enumerate(items):
        ctx = task_prompt(task, it)
        c_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        for j, ch in enumerate(it["choices"]):
            whole = tok(ctx + " " + ch, add_special_tokens=False)["input_ids"]
            reqs.append((i, j, c_ids, whole[len(c_ids) :], len((" " + ch).encode())))
    scores = np.zeros((len(items), 4))
    norms = np.zeros((len(items), 4))
    model.eval()
    with torch.no_grad():
        for k in range(0, len(reqs), bs):
            chunk = reqs[k : k + bs]
            seqs = [c + x for _, _, c, x, _ in chunk]
            width = max(map(len, seqs))
            inp = torch.full((len(seqs), width), tok.pad_token_id)
            for r, s in enumerate(seqs):
                inp[r, : len(s)] = torch.tensor(s)
            logp = torch.log_softmax(model(inp).logits.float(), -1)
            for r, (i, j, c, x, nb) in enumerate(chunk):
                pos = torch.arange(len(c) - 1, len(c) + len(x) - 1)
                lp = logp[r, pos, torch.tensor(x)].sum().item()
                scores[i, j], norms[i, j] = lp, lp / nb
    model.train()
    gold = np.array([it["answer"] for it in items])
    hit = scores.argmax(1) == gold
    kinds = np.array([it["kind"] for it in items])
    return {
        "acc": float(hit.mean()),
        "acc_norm": float((norms.argmax(1) == gold).mean()),
        "acc_by_kind": {k: float(hit[kinds == k].mean()) for k in sorted(set(kinds))},
    }


def lm_eval_crosscheck(model, tok, tasks_dir: Path, limit: int) -> dict[str, float]:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=32, max_length=512)
    res = lm_eval.simple_evaluate(
        model=lm,
        tasks=list(TASKS),
        task_manager=TaskManager(include_path=str(tasks_dir)),
        limit=limit,
    )
    return {t: res["results"][t]["acc,none"] for t in TASKS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, default=Path("/tmp/midtrain-world"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--tokens", type=int, default=3_000_000)
    ap.add_argument("--eval-every", type=int, default=250_000)
    ap.add_argument("--limit", type=int, default=300, help="items per task in the curve")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)

    from transformers import LlamaConfig, LlamaForCausalLM

    info = generate_world(args.world, seed=args.seed, scale=args.scale)
    texts = {n: read_texts(p) for n, p in info["source_paths"].items()}
    t0 = time.time()
    tok = train_tokenizer([t for v in texts.values() for t in v], 1024, args.world / "tokenizer")
    streams = {n: encode_source(tok, v) for n, v in texts.items()}
    n_bytes = {n: info["sources"][n]["bytes"] for n in streams}
    print(f"tokenizer+encode {time.time() - t0:.1f}s; tokens per source:", file=sys.stderr)
    for n, s in streams.items():
        print(
            f"  {n:5s} {len(s):>9,d} tokens, {n_bytes[n] / len(s):.2f} bytes/token", file=sys.stderr
        )
    items = {
        t: [json.loads(x) for x in p.read_text().splitlines()][: args.limit]
        for t, p in info["task_paths"].items()
    }
    # multiple-choice tasks only: the generative one (world_arith_gen) has no choices to score
    items = {t: its for t, its in items.items() if its and "choices" in its[0]}

    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=512,
        max_position_embeddings=512,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    model = LlamaForCausalLM(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_emb = model.model.embed_tokens.weight.numel() + model.lm_head.weight.numel()
    print(f"params {n_params:,d} (non-embedding {n_params - n_emb:,d})", file=sys.stderr)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    seq, bsz = 256, 16
    steps = args.tokens // (seq * bsz)
    warm, decay_from = 50, int(steps * 0.8)
    every = max(1, args.eval_every // (seq * bsz))

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        if step < decay_from:
            return args.lr
        return args.lr * (steps - step) / (steps - decay_from)

    curve = []

    def evaluate(step: int, loss: float) -> None:
        row = {"step": step, "tokens": step * seq * bsz, "loss": loss}
        for t, its in items.items():
            row[t] = score_items(model, tok, t, its)
        curve.append(row)
        accs = "  ".join(f"{t}={row[t]['acc']:.3f}/{row[t]['acc_norm']:.3f}" for t in items)
        print(f"tokens {row['tokens']:>9,d} loss {loss:.3f}  {accs}", flush=True)

    data = batches(streams, seq, bsz, args.seed)
    t0, ema = time.time(), math.nan
    evaluate(0, math.nan)
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = next(data)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema = loss.item() if math.isnan(ema) else 0.95 * ema + 0.05 * loss.item()
        if (step + 1) % every == 0 or step + 1 == steps:
            print(f"  {(step + 1) * seq * bsz / (time.time() - t0):.0f} tok/s", file=sys.stderr)
            evaluate(step + 1, ema)
    for t in items:
        print(f"{t} final acc by kind:", json.dumps(curve[-1][t]["acc_by_kind"]), flush=True)
    check = lm_eval_crosscheck(model, tok, info["tasks_dir"], args.limit)
    print("lm_eval simple_evaluate acc:", json.dumps(check), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"curve": curve, "lm_eval_acc": check}, indent=2))


if __name__ == "__main__":
    main()
