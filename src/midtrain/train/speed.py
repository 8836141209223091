"""Device defaults for speed: what `compile = "auto"` and `precision = "auto"` resolve to.

On CUDA both pay off: bf16 autocast (fp32 master weights, fp32 loss) runs matmuls on tensor cores,
and `torch.compile` fuses the elementwise work (norms, rotary, SiLU·mul, cross-entropy) that
otherwise costs a memory round trip each. On CPU neither is the default: bf16 autocast is many
times slower on CPUs without bf16 matmul units (docs/benchmarks.md), and compiling costs tens of
seconds per run for a gain of about 10% on the demo model, which short probe runs never repay.
"""

from __future__ import annotations

from typing import Literal

Compile = bool | Literal["auto"]


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> bf16 autocast on CUDA, fp32 elsewhere."""
    if precision != "auto":
        return precision
    return "bf16" if device == "cuda" else "fp32"


def resolve_compile(compile: Compile, device: str) -> bool:
    """'auto' -> torch.compile on CUDA, eager elsewhere."""
    if compile == "auto":
        return device == "cuda"
    return bool(compile)
