"""Where one training step of the demo model goes, and how fast it could get at most.

    python scripts/profile_train_step.py --json [--mode compiled] [--precision bf16] [--threads 2]

The step is our loop's (`optim.lm_loss` forward + backward, foreach clipping, fused AdamW) on the
demo model (`midtrain bench train`'s model, batch and sequence length) with random token ids. It
prints the median step time, the torch.profiler self time of the profiled steps grouped into
matmul, attention, optimizer and other (elementwise ops, the loss, inductor's fused kernels,
Python), the measured GEMM rate, and the **ceiling**: the step time if every matmul ran at the
measured GEMM rate and nothing but matmuls and attention took any time,
`ceiling = step / (6·N·tokens / gemm + attention)`. No loop that runs the same model with the same
attention kernel, our own or `transformers.Trainer`, can beat the ceiling (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from collections import defaultdict
from functools import partial

GROUPS = (  # first match wins; names of aten ops in torch.profiler's key_averages
    ("attention", ("attention", "flash", "sdpa")),
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm")),
    ("optimizer", ("adam",)),
)


def group_of(op: str) -> str:
    name = op.lower()
    return next((g for g, keys in GROUPS if any(k in name for k in keys)), "other")


def build(mode: str, precision: str):  # noqa: ANN201 - (step function, N)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from midtrain.bench.train import BATCH, DEMO_MODEL, SEQ_LEN, VOCAB
    from midtrain.train import optim
    from midtrain.train.config import OptimizerConfig
    from midtrain.train.plan import model_flops_per_token

    kwargs = {k: v for k, v in DEMO_MODEL.items() if k != "model_type"}
    config = AutoConfig.for_model(DEMO_MODEL["model_type"], vocab_size=VOCAB, **kwargs)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = optim.make_optimizer(params, OptimizerConfig())
    for g in opt.param_groups:
        g["lr"] = 1e-3
    ids = torch.randint(0, VOCAB, (BATCH, SEQ_LEN))
    loss_fn = partial(optim.lm_loss, model)  # as the loop builds it (train/loop.py)
    if mode == "compiled":
        loss_fn = torch.compile(loss_fn)
    autocast = contextlib.nullcontext
    if precision == "bf16":
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    def step() -> None:
        with autocast():
            loss = loss_fn(ids) / ids.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    _, n = model_flops_per_token(config, SEQ_LEN)
    return step, n, BATCH * SEQ_LEN


def profile(mode: str, precision: str, steps: int, warmup: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from midtrain.bench.train import sgemm_gflops

    step, n, tokens = build(mode, precision)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    self_us: dict[str, float] = defaultdict(float)
    for e in prof.key_averages():
        self_us[group_of(e.key)] += e.self_cpu_time_total
    total = sum(self_us.values())
    shares = {
        g: round(self_us[g] / total, 3) for g in ("matmul", "attention", "optimizer", "other")
    }
    gemm = sgemm_gflops(precision=precision)
    matmul_floor = 6 * n * tokens / (gemm * 1e9)
    attention = shares["attention"] * step_s
    return {
        "mode": mode,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "step_s": round(step_s, 4),
        "tokens_per_s": round(tokens / step_s, 1),
        "shares": shares,
        "gemm_gflops": round(gemm, 1),
        "matmul_s": round(shares["matmul"] * step_s, 4),
        "matmul_floor_s": round(matmul_floor, 4),
        "matmul_efficiency": round(matmul_floor / (shares["matmul"] * step_s), 3),
        "attention_s": round(attention, 4),
        "ceiling": round(step_s / (matmul_floor + attention), 3),
        "steps_timed": steps,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["eager", "compiled"], default="eager")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", action="store_true", help="one JSON object")
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    res = profile(a.mode, a.precision, a.steps, a.warmup)
    print(json.dumps(res) if a.json else "\n".join(f"{k}: {v}" for k, v in res.items()))


if __name__ == "__main__":
    main()
