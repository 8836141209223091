"""Helpers of the GPU tests: a subprocess environment and the tiny models' comparisons."""

from __future__ import annotations

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def env(**extra: str) -> dict[str, str]:
    """A subprocess's environment: offline, this checkout's `midtrain`, no test kill hook."""
    from midtrain import io

    e = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), e.get("PYTHONPATH", "")])
    if io.KILL_ENV not in extra:
        e.pop(io.KILL_ENV, None)
    return e


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(model_dir / "model.safetensors")


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """max over tensors of ||a - b|| / ||a|| (fp32): how far apart two checkpoints' weights are."""
    assert a.keys() == b.keys()
    return max(
        float((a[k].float() - b[k].float()).norm() / a[k].float().norm().clamp_min(1e-12))
        for k in a
    )
