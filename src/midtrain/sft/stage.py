"""The `sft` stage: an SFT config (checkpoint included) in, an SFT directory and `SftResult` out;
and the `sft_eval` stage: the eval stage applied to the checkpoint an SFT probe chose.

A study chains them after a run's train and eval stages (its SFT probe, docs/studies.md). The
chosen LR is only known once the probe has finished, so `sft_eval` reads it from the probe's
`SftResult` when it runs (and when it looks for its cached result).
"""

from __future__ import annotations

from pathlib import Path

from midtrain.errors import MidtrainError
from midtrain.eval.results import EvalResult
from midtrain.eval.stage import EvalJob
from midtrain.jobs import Stage, get_stage, register
from midtrain.schema import Strict, field
from midtrain.sft.config import SftConfig
from midtrain.sft.grid import finished, lr_dir, run_sft
from midtrain.sft.results import SftResult
from midtrain.train import launch


@register
class SftStage(Stage):
    name = "sft"
    Spec = SftConfig
    Result = SftResult

    def run(self, spec: SftConfig, out: Path) -> SftResult:
        n = launch.processes_per_run()  # a study's [resources] processes (train/launch.py)
        if n == 1:
            return run_sft(spec, out, progress=False)
        config = spec.model_dump(mode="json", exclude_none=True)
        launch.run_ranks(["sft", spec.checkpoint], config, out, n)
        if (done := finished(out)) is None:
            raise MidtrainError(f"{out}: the {n}-process SFT probe ended without its sft.json")
        return done

    def cached(self, spec: SftConfig, out: Path) -> SftResult | None:
        return finished(out)


class SftEvalJob(Strict):
    """Evaluate the checkpoint an SFT probe chose (the LR with the lowest validation loss)."""

    sft: str = field(description="The SFT probe's folder (its sft.json names the chosen LR).")
    eval: EvalJob = field(description="What to score; its checkpoint is the probe's choice.")


def chosen_eval(spec: SftEvalJob) -> EvalJob | None:
    """The eval job of the chosen checkpoint (a path under the probe's folder), or None when the
    probe has not finished."""
    res = finished(Path(spec.sft))
    if res is None:
        return None
    ckpt = lr_dir(Path(spec.sft), res.chosen_lr) / "final"
    return spec.eval.model_copy(update={"checkpoint": str(ckpt)})


@register
class SftEvalStage(Stage):
    name = "sft_eval"
    Spec = SftEvalJob
    Result = EvalResult

    def run(self, spec: SftEvalJob, out: Path) -> EvalResult:
        job = chosen_eval(spec)
        if job is None:
            raise MidtrainError(f"{spec.sft}: the SFT probe has not finished; run it first")
        return get_stage("eval").run(job, out)

    def cached(self, spec: SftEvalJob, out: Path) -> EvalResult | None:
        job = chosen_eval(spec)
        return None if job is None else get_stage("eval").cached(job, out)
