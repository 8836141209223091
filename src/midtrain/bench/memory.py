"""`midtrain bench memory`: peak RSS of training and evaluating a 150–300M Llama on CPU.

Every measurement runs in a fresh Python subprocess, so each peak is its own: (a) one process
takes a few optimizer steps of the run path (`plan_run`, `loop.build`, `loop.train_loop`: the
model from a `[model]` table with random weights, fused AdamW, fp32, gradient accumulation), (b)
two FSDP2 ranks over gloo take the same steps on the same global batch (`parallel = "fsdp"`, the
env vars torchrun sets), (c) `eval.evaluate` scores the trained model on the demo world's tasks and
one held-out domain.

A peak is the growth of the process's resident set: the kernel's high-water mark (VmHWM) is reset
(`/proc/self/clear_refs` = 5) once imports and the run plan are done, and the growth is VmHWM then
minus VmRSS at the reset. The analytic need (`analytic_need`) is fp32 weights, gradients and
AdamW's two moments (16 bytes a parameter) plus the activations autograd keeps for one micro
batch (`activation_floats`), counted from the HF Llama forward, not fitted to the measurement.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midtrain.bench import reports as rec
from midtrain.io import library_versions

if TYPE_CHECKING:
    from midtrain.demo.pipeline import DemoWorld

MIB = 2**20
TARGET_SINGLE = 1.3  # one process's peak growth / analytic need, at most
TARGET_FSDP = 0.6  # each FSDP2 rank's peak growth / the one process's, at most
TASKS = ["world_arith", "world_code", "world_facts"]  # the demo world's multiple-choice tasks
_LLAMA = {"model_type": "llama", "vocab_size": 32000, "tie_word_embeddings": False}
PRESETS: dict[str, rec.LlamaTable] = {
    "tiny": {**_LLAMA, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 4, "intermediate_size": 128, "vocab_size": 512},
    "150m": {**_LLAMA, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
             "num_key_value_heads": 12, "intermediate_size": 3072},  # 162M parameters
    "300m": {**_LLAMA, "hidden_size": 1024, "num_hidden_layers": 14, "num_attention_heads": 16,
             "num_key_value_heads": 16, "intermediate_size": 4096},  # 300M parameters
}  # fmt: skip


# -- the analytic need -----------------------------------------------------------------------------


def count_params(model: rec.LlamaTable) -> int:
    """Parameters of the HF model of a `[model]` table (built on the meta device; tied once)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kwargs = dict(model)
    config = AutoConfig.for_model(kwargs.pop("model_type", "llama"), **kwargs)
    with torch.device("meta"):
        return sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def activation_floats(model: rec.LlamaTable, seq_len: int, micro_batch: int) -> int:
    """fp32 values alive at the peak of one micro batch's backward (HF Llama, sdpa attention).

    What autograd saves, per token and layer: the residual input, RMSNorm's x·rsqrt and its
    weighted output (the projections' input); RoPE'd q and k, and v; the attention output (o_proj's
    input); the second residual and its two norm tensors (8d + 2·kv, kv = key/value width); the
    MLP's gate, SiLU(gate), up and their product (4·ffn); the attention's log-sum-exp (one per
    head); the two norms' rsqrt (2). Per token once: the final norm's (3d + 1), RoPE's cos and
    sin (2·head_dim) and, at the start of the backward, the log-probabilities, their gradient and
    the logits' gradient (3·vocab); the logits themselves are freed after the forward. The saved
    part was checked against `torch.autograd.graph.saved_tensors_hooks` (docs/benchmarks.md).
    """
    d, f, layers = model["hidden_size"], model["intermediate_size"], model["num_hidden_layers"]
    heads = model["num_attention_heads"]
    kv = model.get("num_key_value_heads", heads) * (d // heads)
    per_layer = 8 * d + 2 * kv + 4 * f + heads + 2
    head = 3 * d + 1 + 2 * (d // heads) + 3 * model["vocab_size"]
    return micro_batch * seq_len * (layers * per_layer + head)


def analytic_need(model: rec.LlamaTable, seq_len: int, micro_batch: int) -> rec.AnalyticNeed:
    """fp32 weights + gradients + 2 AdamW moments (4 bytes each a parameter) + activations."""
    n = count_params(model)
    parts = {
        "weights_mib": 4 * n / MIB,
        "grads_mib": 4 * n / MIB,
        "adam_moments_mib": 8 * n / MIB,
        "activations_mib": 4 * activation_floats(model, seq_len, micro_batch) / MIB,
    }
    return {"params": n, **{k: round(v, 1) for k, v in parts.items()},
            "need_mib": round(sum(parts.values()), 1)}  # fmt: skip


# -- measurements, each in its own process ---------------------------------------------------------


def rss_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak() -> float:
    """Restart the high-water mark here; the resident set now, the baseline of a growth."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss_mib("VmRSS")


def measure_train(rc: rec.RunTable, out: Path, save: bool) -> rec.TrainPeaks:
    """A few steps of the run path in this process; the peak growth after each step. With `save`,
    the trained weights go to OUT/final afterwards (for the evaluation), outside the peak."""
    import torch.distributed.checkpoint.state_dict  # noqa: F401 - imported before the reset
    import torch.distributed.fsdp  # noqa: F401

    from midtrain import env, train
    from midtrain.train import checkpoint as ckpt
    from midtrain.train import distributed, loop

    cfg = train.load_run_config(rc)
    plan = train.plan_run(cfg)
    env.setup(cfg.threads)
    with distributed.session(plan.dist, plan.device):
        distributed.barrier(plan.dist)
        base = reset_peak()
        t0 = time.perf_counter()
        t, _ = loop.build(plan, out)
        built = rss_mib("VmRSS") - base
        steps = _Peaks(base)
        loop.train_loop(t, [steps])
        res = {"peak_growth_mib": round(rss_mib("VmHWM") - base, 1), "peak_rss_mib":
               round(rss_mib("VmHWM"), 1), "baseline_rss_mib": round(base, 1),
               "after_build_mib": round(built, 1), "step_peaks_mib": steps.peaks,
               "step_loss": steps.losses, "rank": plan.dist.rank,
               "wall_s": round(time.perf_counter() - t0, 1)}  # fmt: skip
        if save and plan.dist.main:
            ckpt.save_checkpoint(out / "final", loop.distributed.unwrap(t.model), plan.tokenizer,
                                 ckpt.TrainerState(lr=0.0))  # fmt: skip
    return res


class _Peaks:
    """A loop callback: the peak growth so far and the loss after every optimizer step."""

    def __init__(self, base: float):
        self.base, self.peaks, self.losses = base, [], []

    def on_step(self, t: Any, out: Any) -> None:
        self.peaks.append(round(rss_mib("VmHWM") - self.base, 1))
        self.losses.append(round(float(out.loss), 4))

    def on_end(self, t: Any) -> None:
        pass


def measure_eval(checkpoint: Path, tasks_dir: Path, store: Path, out: Path, limit: int,
                 batch_size: int, threads: int) -> rec.EvalPeaks:  # fmt: skip
    """`eval.evaluate` of the checkpoint (tasks and one domain); peak growth and examples/s."""
    import lm_eval.evaluator  # noqa: F401 - imported before the reset

    from midtrain import env
    from midtrain.eval import api, lmeval  # noqa: F401

    env.setup(threads)
    base = reset_peak()
    res = api.evaluate(checkpoint, tasks=TASKS, include_path=tasks_dir, domains={"web": store},
                       out=out, limit=limit, batch_size=batch_size, device="cpu")  # fmt: skip
    task_n = sum(s.acc.n for s in res.results.tasks.values())
    docs = sum(s.docs for s in res.results.domains.values())
    task_s = res.timing.get("tasks", 0.0)
    return {
        "peak_growth_mib": round(rss_mib("VmHWM") - base, 1),
        "peak_rss_mib": round(rss_mib("VmHWM"), 1),
        "baseline_rss_mib": round(base, 1),
        "task_examples": task_n,
        "domain_docs": docs,
        "seconds": res.seconds,
        "timing": res.timing,
        "examples_per_s": round((task_n + docs) / res.seconds, 2) if res.seconds else None,
        "task_examples_per_s": round(task_n / task_s, 2) if task_s else None,
    }


def _child() -> None:
    """Subprocess entry: a JSON job on stdin, one JSON line (result or error) on stdout."""
    job = json.loads(sys.stdin.read())
    stdout, sys.stdout = sys.stdout, sys.stderr  # library chatter goes to the stderr file
    try:
        if job["kind"] == "train":
            res = measure_train(job["rc"], Path(job["out"]), job["save"])
        else:
            res = measure_eval(Path(job["checkpoint"]), Path(job["tasks"]), Path(job["store"]),
                               Path(job["out"]), job["limit"], job["batch_size"], job["threads"])  # fmt: skip
    except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
        res = {"error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}
    stdout.write(json.dumps(res) + "\n")
    stdout.flush()
    if "RANK" in os.environ:  # a gloo rank: leave without finalizing (cli.main does the same)
        sys.stderr.flush()
        os._exit(0)


def _spawn(job: rec.TrainJob | rec.EvalJob, log: Path, extra_env: dict[str, str] | None = None):
    src = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **(extra_env or {}),
           "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    code = "from midtrain.bench.memory import _child; _child()"
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)  # fmt: skip
    p.stdin.write(json.dumps(job))
    p.stdin.close()
    return p


def _collect(p: subprocess.Popen, log: Path) -> rec.TrainPeaks | rec.EvalPeaks | rec.ChildError:
    lines = p.stdout.read().strip().splitlines()
    p.wait()
    if lines:
        return json.loads(lines[-1])
    tail = " ".join(log.read_text(errors="replace").split())[-300:]
    return {"error": f"subprocess exited {p.returncode}: {tail}"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_fsdp(rc: rec.RunTable, root: Path, world: int = 2,
             extra_env: dict[str, str] | None = None) -> list[rec.TrainPeaks | rec.ChildError]:  # fmt: skip
    """`world` FSDP2 ranks over gloo on this host, started as torchrun would; each rank's result."""
    port = str(_free_port())
    procs = []
    for r in range(world):
        env = {**(extra_env or {}), "RANK": str(r), "LOCAL_RANK": str(r),
               "WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
        job: rec.TrainJob = {"kind": "train", "rc": {**rc, "parallel": "fsdp"},
                         "out": str(root / "fsdp"), "save": False}  # fmt: skip
        procs.append((_spawn(job, root / f"fsdp-{r}.log", env), root / f"fsdp-{r}.log"))
    return [_collect(p, log) for p, log in procs]


def train_pair(rc: rec.RunTable, root: Path, save: bool,
               extra_env: dict[str, str] | None = None,
               ) -> tuple[rec.TrainPeaks | rec.ChildError, list[rec.TrainPeaks | rec.ChildError]]:  # fmt: skip
    """(one process, the FSDP2 ranks), one after the other, in processes with `extra_env`."""
    job: rec.TrainJob = {"kind": "train", "rc": rc, "out": str(root / "single"), "save": save}
    single = _collect(_spawn(job, root / "single.log", extra_env), root / "single.log")
    _say(f"one process{' ' + str(extra_env) if extra_env else ''}: {single}")
    ranks = run_fsdp(rc, root, extra_env=extra_env)
    _say(f"fsdp ranks: {ranks}")
    return single, ranks


# glibc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold in the heap; a fixed
# 128 KiB threshold returns every tensor's memory when it is freed: what the peak is without that
# (FSDP2 ranks on the host set it themselves, `distributed.return_freed_memory`: for them the
# check is a second run of the same thing)
FIXED_MMAP = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


# -- the benchmark ---------------------------------------------------------------------------------


def run_config(model: rec.LlamaTable, world: DemoWorld, steps: int, seq_len: int,
               micro_batch: int, threads: int) -> rec.RunTable:  # fmt: skip
    """The run config (a TOML-shaped dict `train.load_run_config` validates): a fresh `[model]` on the world's web store, fp32, a linear anneal to 0 over `steps` steps
    of two micro batches (one per FSDP rank; the single process accumulates both)."""
    batch = 2 * micro_batch * seq_len
    return {
        "model": {**model, "max_position_embeddings": max(seq_len, 256)},
        "tokenizer": str(world["tokenizer"]),
        "stores": {"web": str(world["stores"]["web"].path)},
        "mix": [{"source": "web", "ratio": 1.0}],
        "tokens": steps * batch,
        "seq_len": seq_len,
        "batch_tokens": batch,
        "micro_batch": micro_batch,
        "schedule": {"name": "linear", "start_lr": 3e-4, "final_lr": 0.0},
        "precision": "fp32",
        "compile": False,
        "checkpoint_every": 0,
        "threads": threads,
        "device": "cpu",
    }


def run_bench(params: str = "150m", steps: int = 3, seq_len: int = 256, micro_batch: int = 1,
              threads: int = 1, eval_limit: int = 50, eval_batch: int = 32,
              allocator_check: bool = True) -> rec.MemoryReport:  # fmt: skip
    """(a) one process, (b) two FSDP2 ranks, (c) the evaluation, each in fresh subprocesses; with
    `allocator_check`, (a) and (b) again with glibc's mmap threshold fixed at 128 KiB."""
    from midtrain.demo.pipeline import DemoSettings, build_world_and_stores

    model = PRESETS[params]
    need = analytic_need(model, seq_len, micro_batch)
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-memory-") as tmp:
        root = Path(tmp)
        world = build_world_and_stores(root, DemoSettings(scale=0.05, vocab_size=384))
        rc = run_config(model, world, steps, seq_len, micro_batch, threads)
        t0 = time.perf_counter()
        single, ranks = train_pair(rc, root, save=True)
        ev: rec.EvalPeaks | rec.ChildError = {"error": "not run: the one-process run failed"}
        if "error" not in single:
            ejob: rec.EvalJob = {"kind": "eval", "checkpoint": str(root / "single" / "final"),
                   "tasks": str(world["world_dir"] / "tasks"),
                   "store": str(world["stores"]["web"].path), "out": str(root / "eval"),
                   "limit": eval_limit, "batch_size": eval_batch, "threads": threads}  # fmt: skip
            ev = _collect(_spawn(ejob, root / "eval.log"), root / "eval.log")
            _say(f"evaluation: {ev}")
        fixed = train_pair(rc, root, save=False, extra_env=FIXED_MMAP) if allocator_check else None
        wall = time.perf_counter() - t0
    setup: rec.Setup = {"preset": params, "model": model, "seq_len": seq_len, "micro_batch": micro_batch,
             "batch_seqs": 2 * micro_batch, "steps": steps, "threads": threads,
             "eval_limit": eval_limit, "eval_batch": eval_batch, "wall_s": round(wall, 1)}  # fmt: skip
    res = report(need, single, ranks, ev, setup)
    res["fixed_mmap_threshold"] = _allocator(need, single, ranks, fixed) if fixed else None
    return res


def _allocator(need: rec.AnalyticNeed, single: rec.TrainPeaks | rec.ChildError,
               ranks: list[rec.TrainPeaks | rec.ChildError],
               fixed: tuple[rec.TrainPeaks | rec.ChildError, list[rec.TrainPeaks | rec.ChildError]],
               ) -> rec.AllocatorCheck:  # fmt: skip
    """The same runs with freed memory returned at once: their ratios, and what glibc's heap
    kept at the peak with its defaults (the default peak minus this one)."""
    f_single, f_ranks = fixed
    peak = f_single.get("peak_growth_mib")
    kept = [_minus(single, f_single)] + [_minus(a, b) for a, b in zip(ranks, f_ranks, strict=True)]
    return {
        "env": FIXED_MMAP,
        "single": f_single,
        "fsdp": f_ranks,
        "ratio_single_vs_analytic": _ratio(peak, need["need_mib"]),
        "ratio_fsdp_rank_vs_single": [_ratio(r.get("peak_growth_mib"), peak) for r in f_ranks],
        "heap_kept_mib": {"single": kept[0], "fsdp": kept[1:]},
    }


def _minus(a: rec.TrainPeaks | rec.ChildError, b: rec.TrainPeaks | rec.ChildError) -> float | None:
    x, y = a.get("peak_growth_mib"), b.get("peak_growth_mib")
    return round(x - y, 1) if x is not None and y is not None else None


def _say(msg: str) -> None:
    print(f"bench memory: {msg}", file=sys.stderr, flush=True)


def _ratio(a: Any, b: Any) -> float | None:
    ok = isinstance(a, float | int) and isinstance(b, float | int) and b
    return round(a / b, 3) if ok else None


def report(need: rec.AnalyticNeed, single: rec.TrainPeaks | rec.ChildError,
           ranks: list[rec.TrainPeaks | rec.ChildError], ev: rec.EvalPeaks | rec.ChildError,
           setup: rec.Setup) -> rec.MemoryReport:  # fmt: skip
    """The JSON: the three measurements, their ratios and whether each target is met."""
    peak = single.get("peak_growth_mib")
    r_single = _ratio(peak, need["need_mib"])
    r_ranks = [_ratio(r.get("peak_growth_mib"), peak) for r in ranks]
    r_fsdp = max(r_ranks) if r_ranks and None not in r_ranks else None
    errors = {k: v["error"] for k, v in
              [("single", single), ("eval", ev), *((f"fsdp_rank{i}", r) for i, r in enumerate(ranks))]
              if "error" in v}  # fmt: skip
    weights = need["weights_mib"]
    return {
        "benchmark": "memory",
        "analytic": need,
        "single": single,
        "ratio_single_vs_analytic": r_single,
        "meets_single": r_single is not None and r_single <= TARGET_SINGLE,
        "fsdp": ranks,
        "ratio_fsdp_rank_vs_single": r_ranks,
        "ratio_fsdp_max": r_fsdp,
        "meets_fsdp": r_fsdp is not None and r_fsdp <= TARGET_FSDP,
        "eval": ev,
        "ratio_eval_vs_weights": _ratio(ev.get("peak_growth_mib"), weights),
        "targets": {"single_vs_analytic": TARGET_SINGLE, "fsdp_rank_vs_single": TARGET_FSDP},
        "errors": errors,
        "peak_how": "growth of VmHWM over VmRSS at a reset (/proc/self/clear_refs = 5) after "
        "imports and the run plan, each measurement in its own subprocess",
        "activation_formula": "4 B x micro_batch x seq x (layers x (8d + 2kv + 4ffn + heads "
        "+ 2) + 3d + 1 + 2 head_dim + 3 vocab)",
        **setup,
        "versions": library_versions(),
    }
