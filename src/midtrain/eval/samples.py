"""lm-eval's logged samples (`simple_evaluate(..., log_samples=True)["samples"]`) as records.

lm-eval logs one sample per document **and filter**, with the task's per-sample metrics as keys
(their names listed under `"metrics"`). midtrain keeps one `TaskExample` per document:

- the first filter's metrics (lm-eval's order: the task's first `filter_list` entry, `none` for a
  task without filters) are the record's fields; the other filters' are kept as `METRIC,FILTER`
  fields, lm-eval's own naming (`exact_match,flexible-extract`);
- multiple choice: `gold_logprob_per_byte` and `margin` from the choices' log-likelihoods;
  generated text: `response`, the first filter's output (what the metric compared);
- `score`, the task's headline per-example metric on a 0–1 scale: `acc` when lm-eval reports it
  (multiple choice, loglikelihood tasks), else the first numeric metric of the task's
  `metric_list`: `exact_match` for a GSM8K-style generative task, `pass@1` for a HumanEval-style
  code task. `score_metric` names it. Metrics that are not numbers per sample (corpus-level ones
  such as bleu) are left out.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, TypedDict

from midtrain.eval.results import DocId, TaskExample

# keys of a logged sample that are not metrics (used when lm-eval does not list its metrics)
NOT_METRICS = {"doc_id", "target", "doc", "arguments", "resps", "filtered_resps", "filter",
               "metrics", "doc_hash", "prompt_hash", "target_hash"}  # fmt: skip


class LmEvalSample(TypedDict, total=False):
    """One of lm-eval's logged samples, the keys midtrain reads (lm-eval's record, not ours).

    Besides these it carries `doc`, the hashes and one key per metric named in `metrics`
    (`acc`, `exact_match`, ...): those are read by name in `sample_metrics`.
    """

    doc_id: DocId
    target: Any  # a choice index, the target text, or lm-eval's str() of either in a file
    arguments: Any  # tuples per request; {"gen_args_i": {"arg_j": ...}} in a --log_samples file
    resps: list[Any]  # the model's raw responses per request
    filtered_resps: list[Any]  # after the filter: log-likelihoods, or the generated answer
    filter: str  # the filter's name (`none` without one)
    metrics: list[str]  # the task's per-sample metric names, as keys of the sample


class ChoiceMetrics(TypedDict, total=False):
    """A multiple-choice sample's continuous metrics (`choice_metrics`; none for other types)."""

    gold_logprob_per_byte: float
    margin: float
    choices: int


def task_records(task: str, samples: list[LmEvalSample]) -> list[TaskExample]:
    """One record per document of `task` (its samples in lm-eval's order: filter by filter)."""
    by_doc: dict[DocId, list[LmEvalSample]] = {}
    for s in samples:
        by_doc.setdefault(s["doc_id"], []).append(s)
    return [task_example(task, ss[0], ss[1:]) for ss in by_doc.values()]


def task_example(task: str, s: LmEvalSample, others: list[LmEvalSample] = ()) -> TaskExample:
    """One document's record: the first filter's sample `s`, the other filters' `others`."""
    metrics = sample_metrics(s)
    # TaskExample's fields, lm-eval's other per-sample metrics among them
    rec: dict[str, str | float | None] = {"task": task, "doc_id": s["doc_id"]}
    rec |= {m: metrics.get(m) for m in ("acc", "acc_norm")}
    rec |= choice_metrics(s)
    rec |= {k: v for k, v in metrics.items() if k not in rec}
    for o in others:
        rec |= {f"{k},{o.get('filter')}": v for k, v in sample_metrics(o).items()}
    headline = "acc" if "acc" in metrics else next(iter(metrics), None)
    if headline is not None:
        rec["score"], rec["score_metric"] = metrics[headline], headline
    if s.get("filter") not in (None, "none"):  # the filter the record's metrics come from
        rec["filter"] = s["filter"]
    resps = s.get("filtered_resps")
    if "choices" not in rec and isinstance(resps, list) and len(resps) == 1:
        if isinstance(resps[0], str):  # generated: the (filtered) answer that was scored
            rec["response"] = resps[0]
    return TaskExample.model_validate(rec)


def sample_metrics(s: LmEvalSample) -> dict[str, float]:
    """The sample's numeric per-sample metrics, in the task's order."""
    names = s.get("metrics")
    if not isinstance(names, list):
        names = [k for k in s if k not in NOT_METRICS]
    out = {}
    for k in names:
        v = s.get(k)  # a metric's key (read by name), not one of LmEvalSample's
        if isinstance(v, (int, float)):  # bools too: exact_match may be one
            out[k] = float(v)
    return out


def choice_metrics(s: LmEvalSample) -> ChoiceMetrics:
    """Multiple choice: the gold answer's log-probability per UTF-8 byte, its margin over the best
    wrong choice's, and the number of choices ({} for any other output type)."""
    resps, args, gold = s.get("filtered_resps"), s.get("arguments"), s.get("target")
    if not (resps and args and isinstance(gold, int) and len(resps) == len(args) > 1):
        return {}
    lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps]
    per_byte = [ll / max(1, len(a[1].encode("utf-8"))) for ll, a in zip(lls, args, strict=True)]
    wrong = [v for i, v in enumerate(per_byte) if i != gold]
    return {"gold_logprob_per_byte": per_byte[gold], "margin": per_byte[gold] - max(wrong),
            "choices": len(args)}  # fmt: skip


# lm-eval's `--log_samples` files: OUTPUT/MODEL/samples_<task>_<date>.jsonl (EvaluationTracker)
LOGGED_FILE = re.compile(
    r"samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.jsonl"
)


def logged_task(path: Path) -> str | None:
    """The task a `--log_samples` file holds, from its name (None: not such a file's name)."""
    m = LOGGED_FILE.fullmatch(Path(path).name)
    return m.group("task") if m else None


def logged_results(path: Path) -> Path:
    """The `results_<date>.json` lm-eval wrote beside a `--log_samples` file in the same call."""
    m = LOGGED_FILE.fullmatch(Path(path).name)
    return Path(path).with_name(f"results_{m.group('date') if m else ''}.json")


def read_logged(path: Path) -> list[LmEvalSample]:
    """A `--log_samples` file's samples in the form `simple_evaluate` returns them, so that
    `task_records` makes the same records from them as from an in-process evaluation.

    lm-eval's EvaluationTracker writes each sample with its `arguments` as
    `{"gen_args_i": {"arg_j": ...}}`, every response as a string (`sanitize_list`) and the target
    as `str(target)`: the arguments become tuples again, and a multiple-choice target that is a
    choice index (digits, below the number of choices) an int again. Log-likelihoods stay
    strings; `choice_metrics` reads them with `float`.
    """
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(logged_sample(json.loads(line)))
    return out


def logged_sample(s: LmEvalSample) -> LmEvalSample:
    """One sample of a `--log_samples` file in `simple_evaluate`'s form (see `read_logged`)."""
    s = s.copy()
    args = s.get("arguments")
    if isinstance(args, dict):
        key = lambda k: int(k.rsplit("_", 1)[-1])  # noqa: E731 - gen_args_10 after gen_args_9
        s["arguments"] = [tuple(a[k] for k in sorted(a, key=key)) if isinstance(a, dict) else a
                          for _, a in sorted(args.items(), key=lambda kv: key(kv[0]))]  # fmt: skip
    gold, n = s.get("target"), len(s.get("arguments") or [])
    if isinstance(gold, str) and gold.isdigit() and int(gold) < n and n > 1:
        s["target"] = int(gold)
    return s
