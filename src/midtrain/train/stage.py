"""The `train` stage: a run config in, a run directory and its `RunResult` out."""

from __future__ import annotations

from pathlib import Path

from midtrain.jobs import Stage, register
from midtrain.train import rundir
from midtrain.train.config import RunConfig
from midtrain.train.loop import run


@register
class TrainStage(Stage):
    name = "train"
    Spec = RunConfig
    Result = rundir.RunResult

    def run(self, spec: RunConfig, out: Path) -> rundir.RunResult:
        return run(spec, out, progress=False)

    def cached(self, spec: RunConfig, out: Path) -> rundir.RunResult | None:
        return rundir.finished(out)
