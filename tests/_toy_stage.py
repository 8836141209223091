"""A toy stage for the job tests: it registers itself exactly as a real stage module does."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel

from midtrain.io import atomic_write_json, read_json
from midtrain.jobs import Stage, register


class ToySpec(BaseModel):
    value: int
    fail_times: int = 0  # fail this many attempts first (counted in the job folder)
    steps: int = 0  # slow work: this many steps of `step_s` seconds, resumed from the folder
    step_s: float = 0.0


class ToyResult(BaseModel):
    doubled: int


@register
class ToyStage(Stage):
    name = "toy"
    Spec = ToySpec
    Result = ToyResult

    def run(self, spec: ToySpec, out: Path) -> ToyResult:
        out.mkdir(parents=True, exist_ok=True)
        tries = out / "tries"
        n = int(tries.read_text()) + 1 if tries.exists() else 1
        tries.write_text(str(n))
        (out / "gpus").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))  # a worker's GPUs
        if n <= spec.fail_times:
            raise RuntimeError(f"toy failure {n}")
        _slow_steps(spec, out)
        result = ToyResult(doubled=2 * spec.value)
        atomic_write_json(out / "result.json", result.model_dump())
        return result

    def cached(self, spec: ToySpec, out: Path) -> ToyResult | None:
        f = out / "result.json"
        return ToyResult.model_validate(read_json(f)) if f.is_file() else None


def _slow_steps(spec: ToySpec, out: Path) -> None:
    """Resumable slow work: `done` counts finished steps; `starts` logs "node first_step" lines."""
    done = out / "done"
    first = int(done.read_text()) if done.exists() else 0
    if first >= spec.steps:
        return
    with open(out / "starts", "a") as f:
        f.write(f"{_node()} {first}\n")
    for step in range(first, spec.steps):
        time.sleep(spec.step_s)
        done.write_text(str(step + 1))


def _node() -> str:
    """The Ray node this runs on ("local" outside Ray)."""
    import sys

    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return "local"
    return ray.get_runtime_context().get_node_id()
