"""`midtrain bench train`: our training loop vs `transformers.Trainer`, like for like, and sgemm.

Four configurations train the same demo-size Llama (same init seed) on the same sequences (one
random-id token store through the mixture sampler), batch 16 x 256, AdamW (fused, weight decay 0.1
on matrices, betas 0.9/0.95), grad clipping 1.0, constant LR, fp32:

- `ours_eager`, `ours_compiled`: `midtrain.train.run` end to end (sampler, loss, logging, its
  per-step host sync) with `compile = false` / `true`; tokens/s from the log lines of the timed
  steps;
- `hf_eager`, `hf_compiled`: `transformers.Trainer` with `torch_compile=False` / `True`
  (`bench.hf_trainer`); tokens/s from step-end callbacks.

The headline is like for like: `ratio_eager` = ours eager ÷ HF eager and `ratio_compiled` = ours
compiled ÷ HF compiled. Rounds interleave sgemm and the four configurations so that load from
other processes on a shared machine hits all alike. A configuration's tokens/s in a round is a
step's tokens over its median step time (robust to a burst of load during a few steps); the
medians over rounds are reported. Each configuration runs in its own Python subprocess (one per
round), so that its peak RSS (`ru_maxrss`, imports included) is its own and no process-wide
setting or compile cache of one leaks into another. The first `warmup` steps of each are not timed (allocation, compilation).
A configuration that fails (say, HF's `torch_compile` on a CPU without a compiler) is reported as
null with its reason instead of stopping the bench.

FLOPs per token: 6·N + 6·L·seq·d (N = non-embedding + head parameters; the second term is causal
attention, QKᵀ and AV over seq/2 keys on average, forward and backward).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from midtrain.bench.reports import ChildError, LlamaTable, RunTable
from midtrain.demo.pipeline import FULL as DEMO
from midtrain.io import library_versions
from midtrain.train.log import read_log

DEMO_MODEL = dict(DEMO.model)  # the demo's model, vocab, sequence length, batch and LR
VOCAB, SEQ_LEN, BATCH, LR = DEMO.vocab_size, DEMO.seq_len, DEMO.micro_batch, DEMO.base_lr
SGEMM_N = 4096
CONFIGS = ("ours_eager", "ours_compiled", "hf_eager", "hf_compiled")


class Measurement(TypedDict):
    """`measure`: one configuration's tokens/s and its process's peak RSS."""

    tokens_per_s: float
    peak_rss_mib: float


class TrainBenchReport(TypedDict):
    """The `bench train --json` report (`run_bench`)."""

    ratio_eager: float | None
    ratio_compiled: float | None
    ratio_eager_reason: str | None
    ratio_compiled_reason: str | None
    tokens_per_s: dict[str, float | None]
    best_mode: str | None
    step_gflops: float | None
    sgemm_gflops: float
    utilization: float | None
    peak_rss_mib: dict[str, float | None]
    bench_peak_rss_mib: float
    peak_rss_how: str
    errors: dict[str, str]
    rounds: dict[str, list[float]]
    flops_per_token: float
    flops_formula: str
    n_params_flops: int
    model: LlamaTable  # the demo's, with VOCAB
    seq_len: int
    batch: int
    steps_timed: int
    warmup_steps: int
    threads: int
    sgemm_n: int
    precision: str
    versions: dict[str, str]


def sgemm_gflops(n: int = SGEMM_N, reps: int = 3, precision: str = "fp32") -> float:
    """Best of `reps` n x n matmuls (fp32, or bf16 for `precision = "bf16"`), in GFLOP/s."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
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


def _run_config(tok: Path, store: Path, steps: int, compile: bool, threads: int,
                precision: str = "fp32") -> RunTable:  # fmt: skip
    return {
        "precision": precision,
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


def ours_tokens_per_s(rc: RunTable, out: Path, warmup: int) -> float:
    from midtrain import train

    train.run(rc, out, progress=False)
    rows = [r for r in read_log(out / "log.jsonl") if r["step"] > warmup]
    return statistics.median(r["tok_s"] for r in rows)  # one log line (and time) per CPU step


def measure(name: str, rc: RunTable, out: Path, warmup: int) -> Measurement:
    """One configuration in this process: its tokens/s and this process's peak RSS (MiB)."""
    from midtrain.bench.hf_trainer import hf_tokens_per_s
    from midtrain.env import quiet_transformers

    quiet_transformers()
    if rc["threads"]:
        import torch

        torch.set_num_threads(rc["threads"])
    steps = rc["tokens"] // rc["batch_tokens"]
    side, mode = name.split("_")
    rc = {**rc, "compile": mode == "compiled"}
    if side == "ours":
        tok_s = ours_tokens_per_s(rc, out, warmup)
    else:
        tok_s = hf_tokens_per_s(rc, out, steps, warmup, compile=mode == "compiled")
    return {"tokens_per_s": tok_s, "peak_rss_mib": _peak_rss_mib(resource.RUSAGE_SELF)}


def _peak_rss_mib(who: int) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)  # KiB on Linux


def _child() -> None:
    """Subprocess entry: a JSON job on stdin, one JSON line (result or error) on stdout."""
    job = json.loads(sys.stdin.read())
    stdout, sys.stdout = sys.stdout, sys.stderr  # Trainer and compile chatter go to stderr
    try:
        res = measure(job["name"], job["rc"], Path(job["out"]), job["warmup"])
    except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
        res = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    stdout.write(json.dumps(res) + "\n")


def run_config(name: str, rc: RunTable, out: Path, warmup: int) -> Measurement | ChildError:
    """`measure` in a fresh Python subprocess (same interpreter, same `midtrain`)."""
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    job = json.dumps({"name": name, "rc": rc, "out": str(out), "warmup": warmup})
    code = "from midtrain.bench.train import _child; _child()"
    p = subprocess.run(
        [sys.executable, "-c", code], input=job, capture_output=True, text=True, env=env
    )
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        tail = " ".join(p.stderr.split())[-300:]
        return {"error": f"subprocess exited {p.returncode}: {tail}"}
    return json.loads(lines[-1])


def run_bench(
    steps: int = 20,
    rounds: int = 3,
    threads: int = 0,
    warmup: int = 3,
    configs: tuple[str, ...] = CONFIGS,
    precision: str = "fp32",
) -> TrainBenchReport:
    """Interleaved rounds of sgemm and each of `configs`, each in its own subprocess."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    total = steps + warmup
    series: dict[str, list[float]] = {k: [] for k in ("sgemm", *configs)}
    rss: dict[str, float] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-train-") as tmp:
        root = Path(tmp)
        tok, store = _world(root, (total * BATCH + 8) * SEQ_LEN)
        rc = _run_config(tok, store, total, False, threads, precision)
        for r in range(rounds):
            series["sgemm"].append(sgemm_gflops(precision=precision))
            for name in configs:
                if name in errors:
                    continue
                res = run_config(name, rc, root / f"{name}-{r}", warmup)
                print(f"bench train: round {r + 1}/{rounds} {name}: {res}", file=sys.stderr)
                if "error" in res:
                    errors[name] = res["error"]
                    continue
                series[name].append(res["tokens_per_s"])
                rss[name] = max(rss.get(name, 0.0), res["peak_rss_mib"])
        med = {k: statistics.median(v) for k, v in series.items() if v}
        return _report(med, series, rss, errors, rc, steps, warmup)  # plans from the temp world


def _ratio(med: dict[str, float], mode: str, errors: dict[str, str]) -> tuple[Any, Any]:
    ours, hf = f"ours_{mode}", f"hf_{mode}"
    if ours in med and hf in med:
        return round(med[ours] / med[hf], 3), None
    missing = [k for k in (ours, hf) if k not in med]
    return None, "; ".join(f"{k}: {errors.get(k, 'not measured')}" for k in missing)


def _report(med: dict[str, float], series: dict[str, list[float]], rss: dict[str, float],
            errors: dict[str, str], rc: RunTable, steps: int, warmup: int,
            ) -> TrainBenchReport:  # fmt: skip
    import torch

    from midtrain import train
    from midtrain.train.plan import model_flops_per_token

    plan = train.plan_run(train.load_run_config(rc))
    per_token, n = model_flops_per_token(plan.model_config, SEQ_LEN)
    ours = {k: v for k, v in med.items() if k.startswith("ours_")}
    best = max(ours, key=ours.get) if ours else None
    step_gflops = per_token * ours[best] / 1e9 if best else None
    ratio_eager, why_eager = _ratio(med, "eager", errors)
    ratio_compiled, why_compiled = _ratio(med, "compiled", errors)
    return {
        "ratio_eager": ratio_eager,
        "ratio_compiled": ratio_compiled,
        "ratio_eager_reason": why_eager,
        "ratio_compiled_reason": why_compiled,
        "tokens_per_s": {k: round(med[k], 1) if k in med else None for k in CONFIGS},
        "best_mode": best.removeprefix("ours_") if best else None,
        "step_gflops": round(step_gflops, 2) if step_gflops else None,
        "sgemm_gflops": round(med["sgemm"], 2),
        "utilization": round(step_gflops / med["sgemm"], 3) if step_gflops else None,
        "peak_rss_mib": {k: rss.get(k) for k in CONFIGS},
        "bench_peak_rss_mib": _peak_rss_mib(resource.RUSAGE_SELF),
        "peak_rss_how": "ru_maxrss of each configuration's own subprocess (imports included), "
        "max over rounds; bench_peak_rss_mib: the parent process (data, sgemm)",
        "errors": errors,
        "rounds": {k: [round(x, 1) for x in v] for k, v in series.items()},
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
        "precision": rc["precision"],
        "versions": library_versions(),
    }
