"""The `train` stage: a run config in, a run directory and its `RunResult` out."""

from __future__ import annotations

from pathlib import Path

from midtrain.errors import MidtrainError
from midtrain.jobs import Stage, register
from midtrain.train import launch, rundir
from midtrain.train.config import RunConfig
from midtrain.train.loop import run


@register
class TrainStage(Stage):
    name = "train"
    Spec = RunConfig
    Result = rundir.RunResult

    def run(self, spec: RunConfig, out: Path) -> rundir.RunResult:
        n = launch.processes_per_run()  # a study's [resources] processes (train/launch.py)
        if n == 1:
            return run(spec, out, progress=False)
        launch.run_ranks(["anneal"], spec.model_dump(mode="json", exclude_none=True), out, n)
        if (done := rundir.finished(out)) is None:
            raise MidtrainError(f"{out}: the {n}-process run ended without its metrics.json")
        return done

    def cached(self, spec: RunConfig, out: Path) -> rundir.RunResult | None:
        return rundir.finished(out)
