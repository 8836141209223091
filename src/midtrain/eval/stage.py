"""The `eval` stage: a checkpoint and eval settings in, per-example records out."""

from __future__ import annotations

from pathlib import Path

from midtrain.errors import MidtrainError
from midtrain.eval.api import EvalSettings, evaluate, tasks_key
from midtrain.eval.results import EvalResult
from midtrain.jobs import Stage, register
from midtrain.schema import Strict, field


class EvalJob(Strict):
    """What to evaluate: a checkpoint, the settings, and held-out domains by label."""

    checkpoint: str = field(description="HF causal-LM folder.")
    settings: EvalSettings = field(EvalSettings(), description="Tasks and their settings.")
    domains: dict[str, str] = field({}, description="Token store folders by domain label.")


@register
class EvalStage(Stage):
    name = "eval"
    Spec = EvalJob
    Result = EvalResult

    def run(self, spec: EvalJob, out: Path) -> EvalResult:
        s = spec.settings
        return evaluate(
            spec.checkpoint, tasks=s.tasks, include_path=s.include_path, domains=spec.domains,
            out=out, limit=s.limit, num_fewshot=s.num_fewshot, batch_size=s.batch_size,
            task_settings={t: ts.model_dump(exclude_none=True) for t, ts in s.task_settings.items()},
            allow_code_execution=s.allow_code_execution,
        )  # fmt: skip

    def cached(self, spec: EvalJob, out: Path) -> EvalResult | None:
        """A complete evaluation of this spec in `out` (eval.json is written last).

        Compares the settings, the names and what the tasks read (`tasks_key`: a changed gold
        answer in a task's data file means evaluating again); `run` also checks the whole content
        key (the checkpoint's and the stores' hashes too). An evaluation whose generative tasks
        have no per-example score (written by an older midtrain) is done again.
        """
        if not ((out / "eval.json").is_file() and (out / "examples.jsonl").is_file()):
            return None
        res = EvalResult.load(out)
        same = (
            res.checkpoint == str(Path(spec.checkpoint))
            and res.tasks == spec.settings.tasks
            and res.settings == spec.settings.hashed()
            and set(res.domains) == set(spec.domains)
        )
        if not same or res.tasks_key is None or res.lacks_scores():
            return None
        return res if res.tasks_key == _tasks_key(spec.settings) else None


def _tasks_key(s: EvalSettings) -> str | None:
    """The current tasks key; None when it cannot be computed (a data file is missing: running
    the job gives the one-line error)."""
    try:
        return tasks_key(s.tasks, s.include_path)
    except MidtrainError:
        return None
