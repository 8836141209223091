"""`midtrain bench merge`: peak memory of `midtrain merge` on two random Llama-like checkpoints.

Two bf16 checkpoints of about `params` parameters are written shard by shard with safetensors
(random tensors, no model is built), then merged in a fresh Python process that reports its own
peak RSS (`getrusage(RUSAGE_SELF).ru_maxrss`) twice: after importing torch, safetensors and
midtrain.merge (the baseline), and after the merge. The headline is peak RSS ÷ the size of one
checkpoint (goal <= 1.3). The inputs were just written, so they are read from the page cache:
merge seconds measure the merge, not the disk. The temporary folder is removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TypedDict

import midtrain
from midtrain.bench.reports import LlamaTable
from midtrain.io import library_versions

GOAL_RATIO = 1.3
LARGE = {"hidden_size": 2048, "intermediate_size": 8192, "num_attention_heads": 32,
         "num_key_value_heads": 8, "vocab_size": 32_000}  # fmt: skip
SMALL = {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 1000}  # fmt: skip


class MergeReport(TypedDict):
    """The `bench merge --json` report (`run_bench`)."""

    params: int
    layers: int
    input_shards: int
    output_shards: int
    checkpoint_gb: float
    peak_rss_gb: float
    baseline_rss_gb: float
    peak_rss_ratio: float
    peak_above_baseline_ratio: float
    goal_ratio: float
    meets_goal: bool
    merge_s: float
    read_gb_per_s: float
    load_avg_1m: float
    versions: dict[str, str]


def bench_config(params: int) -> LlamaTable:
    """Llama config kwargs with about `params` parameters (layers fill what embeddings leave):
    the checkpoints' config.json (`LlamaConfig(**cfg)`)."""
    base = LARGE if params >= 200_000_000 else SMALL
    h, i, v = base["hidden_size"], base["intermediate_size"], base["vocab_size"]
    kv = h // base["num_attention_heads"] * base["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    layers = max(1, round((params - 2 * v * h - h) / per_layer))
    return {**base, "num_hidden_layers": layers, "max_position_embeddings": 2048,
            "tie_word_embeddings": False, "dtype": "bfloat16"}  # fmt: skip


def tensor_shapes(cfg: LlamaTable) -> dict[str, tuple[int, ...]]:
    """The HF Llama state dict's names and shapes, in save order."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, h)}
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
            p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }  # fmt: skip
    return shapes | {"model.norm.weight": (h,), "lm_head.weight": (v, h)}


def write_random_checkpoint(path: Path, cfg: LlamaTable, shards: int, seed: int) -> int:
    """A sharded bf16 HF folder of random tensors, written one shard at a time; its bytes."""
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    shapes = tensor_shapes(cfg)
    numel = {k: _prod(s) for k, s in shapes.items()}
    per_shard = sum(numel.values()) / shards
    groups: list[list[str]] = [[]]
    filled = 0
    for k in shapes:  # balanced by size: a new shard when this one reached its share
        if groups[-1] and filled >= per_shard * len(groups) and len(groups) < shards:
            groups.append([])
        groups[-1].append(k)
        filled += numel[k]
    path.mkdir(parents=True)
    LlamaConfig(**cfg).save_pretrained(path)
    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for n, keys in enumerate(groups):
        name = f"model-{n + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {k: (torch.randn(shapes[k], generator=gen) * 0.02).to(torch.bfloat16)
                   for k in keys}  # fmt: skip
        save_file(tensors, str(path / name), metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map |= dict.fromkeys(keys, name)
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


# Peak RSS from /proc/self/status VmHWM: ru_maxrss would not do, Linux carries the forking
# parent's peak (here: the writer of the random shards) into the child's ru_maxrss across exec.
CHILD = """
import json, re, resource, sys, time
import torch, safetensors
from midtrain.merge import merge_checkpoints

def hwm():
    try:
        with open("/proc/self/status") as f:
            return int(re.search(r"VmHWM:\\s+(\\d+) kB", f.read()).group(1)) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

base = hwm()
a, b, out = sys.argv[1:4]
t0 = time.perf_counter()
rec = merge_checkpoints([a, b], out)
wall = time.perf_counter() - t0
peak = hwm()
print(json.dumps({"baseline": base, "peak": peak, "merge_s": wall, "shards": rec["shards"]}))
"""


def run_bench(params: int = 1_000_000_000, shards: int = 4, seed: int = 0) -> MergeReport:
    """Write two random checkpoints, merge them in a fresh process, report memory and speed."""
    cfg = bench_config(params)
    n_params = sum(_prod(s) for s in tensor_shapes(cfg).values())
    with tempfile.TemporaryDirectory(prefix="midtrain-bench-merge-") as root:
        a, b, out = Path(root) / "a", Path(root) / "b", Path(root) / "merged"
        size = write_random_checkpoint(a, cfg, shards, seed)
        write_random_checkpoint(b, cfg, shards, seed + 1)
        src = str(Path(midtrain.__file__).parents[1])  # this midtrain, not another installed one
        path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p)
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(a), str(b), str(out)],
            env={**os.environ, "PYTHONPATH": path},
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"bench merge: the merge process failed:\n{proc.stderr[-2000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
    peak, base = child["peak"], child["baseline"]
    return {
        "params": n_params,
        "layers": cfg["num_hidden_layers"],
        "input_shards": shards,
        "output_shards": child["shards"],
        "checkpoint_gb": size / 1e9,
        "peak_rss_gb": peak / 1e9,
        "baseline_rss_gb": base / 1e9,
        "peak_rss_ratio": peak / size,
        "peak_above_baseline_ratio": (peak - base) / size,
        "goal_ratio": GOAL_RATIO,
        "meets_goal": peak / size <= GOAL_RATIO,
        "merge_s": child["merge_s"],
        "read_gb_per_s": 2 * size / 1e9 / child["merge_s"],
        "load_avg_1m": os.getloadavg()[0],  # other processes on a shared machine slow the merge
        "versions": library_versions(),
    }
