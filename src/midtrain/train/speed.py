"""Device defaults for speed: what `compile = "auto"` and `precision = "auto"` resolve to.

On CUDA both pay off: bf16 autocast (fp32 master weights, fp32 loss) runs matmuls on tensor cores,
and `torch.compile` fuses the elementwise work (norms, rotary, SiLU·mul, cross-entropy) that
otherwise costs a memory round trip each. On CPU neither is the default. bf16 autocast is many
times slower on CPUs without native bf16 matmuls, and faster on those with them (AVX512-BF16 or
AMX: 1.6x on the demo model, docs/benchmarks.md); `auto` stays fp32 on every CPU so that a run's
numbers do not depend on which CPU it lands on. Compiling costs tens of seconds per run for a
gain of about 10% on the demo model, which short probe runs never repay.
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


def native_bf16_cpu(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bf16 matmul instructions (x86 avx512_bf16 or amx_bf16); None when
    unknown (no /proc/cpuinfo)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith(("flags", "Features"))), [])  # fmt: skip
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def precision_warning(precision: str, device: str) -> str | None:
    """A warning for bf16 on a CPU without native bf16 (many times slower than fp32)."""
    if precision != "bf16" or device != "cpu" or native_bf16_cpu() is not False:
        return None
    return ("precision bf16 on a CPU without bf16 matmul instructions (avx512_bf16, amx_bf16) is "
            "much slower than fp32; use precision = 'fp32'")  # fmt: skip
