"""The `eval` stage: a checkpoint and eval settings in, per-example records out."""

from __future__ import annotations

from pathlib import Path

from midtrain.eval.api import EvalSettings, evaluate
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
        )  # fmt: skip

    def cached(self, spec: EvalJob, out: Path) -> EvalResult | None:
        """A complete evaluation of this spec in `out` (eval.json is written last).

        Compares the settings and names only; `run` also checks the content key (file hashes).
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
        return res if same else None
