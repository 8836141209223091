"""A toy stage for the job tests: it registers itself exactly as a real stage module does."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from midtrain.io import atomic_write_json, read_json
from midtrain.jobs import Stage, register


class ToySpec(BaseModel):
    value: int
    fail_times: int = 0  # fail this many attempts first (counted in the job folder)


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
        if n <= spec.fail_times:
            raise RuntimeError(f"toy failure {n}")
        result = ToyResult(doubled=2 * spec.value)
        atomic_write_json(out / "result.json", result.model_dump())
        return result

    def cached(self, spec: ToySpec, out: Path) -> ToyResult | None:
        f = out / "result.json"
        return ToyResult.model_validate(read_json(f)) if f.is_file() else None
