"""`midtrain bench gpu`: tokens/s and MFU of a ~125M and a ~1B Llama anneal on one GPU, the
evaluation's examples/s, and peak GPU memory.

Each model is a fresh Llama built from its `[model]` table (random weights, vocab 32,000, seq
2,048, 32,768 tokens per optimizer step), annealed by `midtrain.train.run` end to end with the
CUDA defaults (`precision` and `compile` "auto": bf16 autocast with fp32 master weights and
AdamW state, `torch.compile` of the model forward + loss) on a store of random token ids, each in
its own Python subprocess so that its peak GPU memory (`torch.cuda.max_memory_allocated`) and its
compile caches are its own. On CUDA the log is flushed every 10 steps (`train.log.LOG_EVERY`),
so the first 10 steps (compilation, allocation) are the warmup and tokens/s is the timed steps'
tokens over their time, both read from `log.jsonl`.

MFU = 6·N·tokens/s ÷ the GPU's dense bf16 peak (N = non-embedding + head parameters, as
`train.plan.model_flops_per_token`); `mfu_with_attention` counts 6·N + 6·L·seq·d per token. The
peak comes from `PEAK_BF16` by device name, or from `--peak-flops`; the JSON says which.

The evaluation: the ~125M anneal's final checkpoint through `midtrain.eval.evaluate` on CUDA,
bits-per-byte of the store's held-out documents and a generated 4-choice lm-eval task, run twice
(the second, warm, is reported): documents/s and task examples/s from the evaluation's timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict

import numpy as np

from midtrain.bench.reports import ChildError, LlamaTable, RunTable
from midtrain.errors import MidtrainError
from midtrain.io import library_versions

if TYPE_CHECKING:
    from midtrain.train.log import LogLine

# Dense bf16 tensor-core FLOP/s (no sparsity) by device name: the first key found in
# `torch.cuda.get_device_properties(0).name` wins, so the longer names come first.
PEAK_BF16: tuple[tuple[str, float], ...] = (
    ("H200 NVL", 835e12),
    ("H200", 989e12),  # SXM (and GH200)
    ("H100 NVL", 835e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
)

VOCAB, SEQ_LEN, BATCH_TOKENS, WARMUP = 32_000, 2048, 32_768, 10
_LLAMA = {"model_type": "llama", "vocab_size": VOCAB, "max_position_embeddings": SEQ_LEN,
          "tie_word_embeddings": False}  # fmt: skip
_125M = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
         "num_key_value_heads": 12, "intermediate_size": 2048}  # fmt: skip
_1B = {"hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
       "num_key_value_heads": 8, "intermediate_size": 8192}  # Llama 3.2 1B's blocks  # fmt: skip


class ModelEntry(TypedDict):
    """One benchmarked model: its `[model]` table and its micro batch."""

    model: LlamaTable
    micro_batch: int


MODELS: dict[str, ModelEntry] = {  # the [model] table and the micro batch of each
    "125m": {"model": {**_LLAMA, **_125M}, "micro_batch": 16},
    "1b": {"model": {**_LLAMA, **_1B}, "micro_batch": 8},
}
EVAL_MODEL = "125m"
TASK, TASK_ITEMS, HELDOUT_DOCS, HELDOUT_LEN, EVAL_BATCH = "bench_mc", 256, 256, 512, 64


class TrainResult(TypedDict):
    """`measure_train`: one model's anneal."""

    tokens_per_s: float
    n_params_flops: int
    flops_per_token: float
    peak_gpu_mem_gib: float
    peak_gpu_reserved_gib: float
    precision: str
    compile: bool
    micro_batch: int
    grad_accumulation: int
    final_loss: float | None
    wall_s: float


class TrainReport(TrainResult):
    """A model's entry in the report's `train`: `measure_train`'s result with its MFU."""

    mfu: float | None
    mfu_with_attention: float | None


class EvalResult(TypedDict):
    """`measure_eval`: the warm evaluation's rates."""

    task_examples_per_s: float
    domain_docs_per_s: float
    task_examples: int
    domain_docs: int
    doc_tokens: int
    batch_size: int
    timing_s: dict[str, float]
    peak_gpu_mem_gib: float


class TrainJob(TypedDict):
    """A training measurement for `_child` (sent as JSON on its stdin)."""

    kind: Literal["train"]
    rc: RunTable
    out: str


class EvalJob(TypedDict):
    """An evaluation measurement for `_child` (sent as JSON on its stdin)."""

    kind: Literal["eval"]
    ckpt: str
    store: str
    tasks: str
    out: str


class GpuReport(TypedDict):
    """The `bench gpu --json` report (`run_bench`)."""

    device: str
    gpu_mem_gib: float
    peak_flops: float | None
    peak_source: str
    train: dict[str, TrainReport | ChildError]
    eval: EvalResult | ChildError | None
    eval_model: str | None
    models: dict[str, ModelEntry]
    seq_len: int
    tokens_per_step: int
    warmup_steps: int
    steps_timed: int
    mfu_formula: str
    wall_s: float
    torch_cuda: str | None
    versions: dict[str, str]


def peak_flops(device_name: str, override: float | None = None) -> tuple[float | None, str]:
    """(dense bf16 FLOP/s, where it came from): `override` (--peak-flops), else the table."""
    if override:
        return float(override), "--peak-flops"
    for key, flops in PEAK_BF16:
        if key.lower() in device_name.lower():
            return flops, f"table: {key}"
    return None, f"unknown device {device_name!r}: pass --peak-flops"


def mfu(n_params: int, tokens_per_s: float, peak: float | None) -> float | None:
    """Model FLOPs utilization: 6·N·tokens/s ÷ peak (None without a peak)."""
    if not peak:
        return None
    return 6.0 * n_params * tokens_per_s / peak


def require_cuda() -> Any:
    """torch's first CUDA device's properties, else the one-line error."""
    import torch

    if not torch.cuda.is_available():
        raise MidtrainError(
            "bench gpu: no CUDA device (torch.cuda.is_available() is False); run it on a GPU "
            "machine (make test-gpu runs it after the GPU tests)"
        )
    return torch.cuda.get_device_properties(0)


def timed_tokens_per_s(rows: list[LogLine], tokens_per_step: int, warmup: int) -> float:
    """Tokens/s of the steps after `warmup` from log lines (log.jsonl's JSON rows as
    `train.log.read_log` reads them): each line's `tok_s` is its flush
    window's (every line of a window has the window's mean), so a step took tokens/tok_s."""
    timed = [r for r in rows if r["step"] > warmup]
    if not timed:
        raise MidtrainError(f"bench gpu: no log line after the {warmup} warmup steps")
    seconds = sum(tokens_per_step / r["tok_s"] for r in timed)
    return len(timed) * tokens_per_step / seconds


# -- the world: a 32k word-level tokenizer, a store of random ids, a generated task ---------------


def _tokenizer(root: Path) -> Path:
    """A word-level tokenizer of VOCAB ids: EOS, the task's prompt words, then w5 ... w31999."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<|endoftext|>", "Question", "Answer", ":", "?"]
    vocab = {w: i for i, w in enumerate(words)} | {f"w{i}": i for i in range(len(words), VOCAB)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>")
    tok.save_pretrained(root / "tokenizer")
    return root / "tokenizer"


def _store(root: Path, tok_dir: Path, n_tokens: int) -> Path:
    """Random ids (no EOS) for training and HELDOUT_DOCS held-out documents for evaluation."""
    from midtrain.data.prepare import write_store
    from midtrain.data.tokenizer import load_tokenizer, tokenizer_hash

    rng = np.random.default_rng(0)
    ids = rng.integers(5, VOCAB, size=n_tokens, dtype=np.uint16)
    held = [rng.integers(5, VOCAB, size=HELDOUT_LEN) for _ in range(HELDOUT_DOCS)]
    heldout = [(d, sum(len(f"w{i} ") for i in d)) for d in held]
    write_store(root / "store", "bench", [ids], vocab_size=VOCAB, eos_id=0,
                tokenizer_hash=tokenizer_hash(load_tokenizer(tok_dir)), heldout=heldout)  # fmt: skip
    return root / "store"


def _task(root: Path) -> Path:
    """A 4-choice lm-eval task of random words, in the demo world's task format."""
    from midtrain.demo.world import DOC_TO_TEXT, LOADER_PY, TASK_YAML

    rng = np.random.default_rng(1)
    words = lambda n: " ".join(f"w{i}" for i in rng.integers(5, VOCAB, size=n))  # noqa: E731
    d = root / "tasks"
    d.mkdir()
    rows = [{"question": words(24) + " ?", "choices": [words(3) for _ in range(4)],
             "answer": int(rng.integers(4))} for _ in range(TASK_ITEMS)]  # fmt: skip
    (d / f"{TASK}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / f"{TASK}.yaml").write_text(
        TASK_YAML.format(name=TASK, doc_to_text=DOC_TO_TEXT["world_facts"])
    )
    (d / "world_data.py").write_text(LOADER_PY)
    return d


def run_config(name: str, tok: Path, store: Path, steps: int) -> RunTable:
    """The run config (a TOML-shaped dict `train.run` validates) of the anneal of model `name`: WARMUP + `steps` steps, linear decay, CUDA defaults."""
    m = MODELS[name]
    return {
        "model": dict(m["model"]),
        "tokenizer": str(tok),
        "stores": {"bench": str(store)},
        "mix": [{"source": "bench", "ratio": 1.0}],
        "tokens": (WARMUP + steps) * BATCH_TOKENS,
        "seq_len": SEQ_LEN,
        "batch_tokens": BATCH_TOKENS,
        "micro_batch": m["micro_batch"],
        "schedule": {"name": "linear", "start_lr": 3e-4},
        "checkpoint_every": 0,
        "device": "cuda",
    }


# -- one measurement per subprocess ----------------------------------------------------------------


def measure_train(rc: RunTable, out: Path) -> TrainResult:
    """Anneal in this process; tokens/s of the timed steps, N, FLOPs/token, peak GPU memory."""
    import torch
    from transformers import AutoConfig

    from midtrain import train
    from midtrain.io import read_json
    from midtrain.train.log import read_log
    from midtrain.train.plan import model_flops_per_token

    torch.cuda.reset_peak_memory_stats()
    result = train.run(rc, out, progress=False)
    tok_s = timed_tokens_per_s(read_log(out / "log.jsonl"), rc["batch_tokens"], WARMUP)
    per_token, n = model_flops_per_token(AutoConfig.from_pretrained(out / "final"), SEQ_LEN)
    resolved = read_json(out / "config.json")["resolved"]
    return {
        "tokens_per_s": round(tok_s, 1), "n_params_flops": n, "flops_per_token": per_token,
        "peak_gpu_mem_gib": _gib(torch.cuda.max_memory_allocated()),
        "peak_gpu_reserved_gib": _gib(torch.cuda.max_memory_reserved()),
        "precision": resolved["precision"], "compile": resolved["compile"],
        "micro_batch": rc["micro_batch"], "grad_accumulation": resolved["grad_accumulation"],
        "final_loss": result.final_loss, "wall_s": result.wall_s,
    }  # fmt: skip


def measure_eval(ckpt: Path, store: Path, tasks: Path, out: Path) -> EvalResult:
    """Evaluate `ckpt` on CUDA twice (a cold and a warm run); the warm one's rates."""
    import torch

    from midtrain.eval import evaluate

    kwargs = dict(tasks=[TASK], include_path=tasks, domains={"bench": store},
                  batch_size=EVAL_BATCH, device="cuda")  # fmt: skip
    evaluate(ckpt, out=out / "cold", **kwargs)
    torch.cuda.reset_peak_memory_stats()
    res = evaluate(ckpt, out=out / "warm", **kwargs)
    return {
        "task_examples_per_s": round(TASK_ITEMS / res.timing["tasks"], 1),
        "domain_docs_per_s": round(HELDOUT_DOCS / res.timing["domain:bench"], 1),
        "task_examples": TASK_ITEMS, "domain_docs": HELDOUT_DOCS, "doc_tokens": HELDOUT_LEN,
        "batch_size": EVAL_BATCH, "timing_s": res.timing,
        "peak_gpu_mem_gib": _gib(torch.cuda.max_memory_allocated()),
    }  # fmt: skip


def _gib(n: int) -> float:
    return round(n / 2**30, 2)


def _child() -> None:
    """Subprocess entry: a JSON job on stdin, one JSON line (result or error) on stdout."""
    job = json.loads(sys.stdin.read())
    stdout, sys.stdout = sys.stdout, sys.stderr  # compile and lm-eval chatter go to stderr
    try:
        if job["kind"] == "train":
            res = measure_train(job["rc"], Path(job["out"]))
        else:
            res = measure_eval(*(Path(job[k]) for k in ("ckpt", "store", "tasks", "out")))
    except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
        res = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    stdout.write(json.dumps(res) + "\n")


def in_subprocess(job: TrainJob | EvalJob) -> TrainResult | EvalResult | ChildError:
    """`_child` in a fresh Python process (same interpreter, same `midtrain`)."""
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    code = "from midtrain.bench.gpu import _child; _child()"
    p = subprocess.run([sys.executable, "-c", code], input=json.dumps(job), capture_output=True,
                       text=True, env=env)  # fmt: skip
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        return {"error": f"subprocess exited {p.returncode}: {' '.join(p.stderr.split())[-300:]}"}
    return json.loads(lines[-1])


# -- the benchmark ---------------------------------------------------------------------------------


def run_bench(models: tuple[str, ...] = tuple(MODELS), steps: int = 20,
              peak_override: float | None = None) -> GpuReport:  # fmt: skip
    """Each model's anneal, then the evaluation of the EVAL_MODEL's checkpoint; one dict."""
    import torch

    props = require_cuda()
    peak, source = peak_flops(props.name, peak_override)
    print(f"bench gpu: {props.name}, bf16 peak {peak or float('nan'):.4g} FLOP/s ({source})",
          file=sys.stderr)  # fmt: skip
    t0 = time.time()
    train_res: dict[str, TrainReport | ChildError] = {}
    eval_res: EvalResult | ChildError | None = None
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-gpu-") as tmp:
        root = Path(tmp)
        tok = _tokenizer(root)
        store = _store(root, tok, (WARMUP + steps) * BATCH_TOKENS + 8 * SEQ_LEN)
        for name in models:
            job: TrainJob = {"kind": "train", "rc": run_config(name, tok, store, steps),
                             "out": str(root / name)}  # fmt: skip
            train_res[name] = _with_mfu(in_subprocess(job), peak)
            print(f"bench gpu: {name}: {train_res[name]}", file=sys.stderr)
        if EVAL_MODEL in train_res and "error" not in train_res[EVAL_MODEL]:
            eval_res = in_subprocess({"kind": "eval", "ckpt": str(root / EVAL_MODEL / "final"),
                                      "store": str(store), "tasks": str(_task(root)),
                                      "out": str(root / "eval")})  # fmt: skip
    return {
        "device": props.name, "gpu_mem_gib": _gib(props.total_memory),
        "peak_flops": peak, "peak_source": source, "train": train_res, "eval": eval_res,
        "eval_model": EVAL_MODEL if eval_res else None,
        "models": {k: MODELS[k] for k in models}, "seq_len": SEQ_LEN,
        "tokens_per_step": BATCH_TOKENS, "warmup_steps": WARMUP, "steps_timed": steps,
        "mfu_formula": "6*N*tokens_per_s / peak_flops, N = non-embedding + head params",
        "wall_s": round(time.time() - t0, 1), "torch_cuda": torch.version.cuda,
        "versions": library_versions(),
    }  # fmt: skip


def _with_mfu(res: TrainResult | ChildError, peak: float | None) -> TrainReport | ChildError:
    if "error" in res:
        return res
    util = mfu(res["n_params_flops"], res["tokens_per_s"], peak)
    with_attn = res["flops_per_token"] * res["tokens_per_s"] / peak if peak else None
    return {**res, "mfu": _r(util), "mfu_with_attention": _r(with_attn)}


def _r(x: float | None) -> float | None:
    return round(x, 4) if x is not None else None
