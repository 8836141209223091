"""What an evaluation produces: per-example records and their summary (the `eval` stage's result).

```
OUT/examples.jsonl   one TaskExample or DomainExample per line (sorted: kind, task/domain, doc_id)
OUT/eval.json        EvalResult without the examples (cache key, settings, summaries, timing)
```
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator
from typing_extensions import TypedDict  # pydantic validates a typing.TypedDict only on 3.12+

from midtrain.io import read_json
from midtrain.schema import validate

FORMAT = "midtrain-eval/1"
LN2 = math.log(2.0)
TASK_METRICS = ("acc", "acc_norm", "gold_logprob_per_byte", "margin", "score")

DocId = int | str


class TaskExample(BaseModel):
    """One lm-eval document. Other per-sample metrics of lm-eval are kept as extra fields."""

    model_config = ConfigDict(extra="allow")

    kind: Literal["task"] = "task"
    task: str
    doc_id: DocId
    acc: float | None = None
    acc_norm: float | None = None
    gold_logprob_per_byte: float | None = None  # log p(gold continuation) / its UTF-8 bytes
    margin: float | None = None  # gold per-byte log-prob minus the best wrong choice's
    choices: int | None = None  # number of choices (multiple choice): chance is 1 / choices
    score: float | None = None  # the task's headline metric (acc, exact_match: samples.py)
    score_metric: str | None = None  # which metric `score` is

    @model_validator(mode="after")
    def _score_is_acc_by_default(self) -> TaskExample:
        """A record made before `score` existed (or by hand) with an accuracy scores by it."""
        if self.score is None and self.score_metric is None and self.acc is not None:
            self.score, self.score_metric = self.acc, "acc"
        return self


class DomainExample(BaseModel):
    """One held-out document of a token store."""

    kind: Literal["domain"] = "domain"
    domain: str
    doc_id: DocId
    nll: float  # nats, summed over the document's tokens
    tokens: int
    bytes: int
    bpb: float  # nll / (ln 2 * bytes)


class MetricSummary(BaseModel):
    mean: float | None
    stderr: float | None
    n: int


class TaskSummary(BaseModel):
    acc: MetricSummary
    acc_norm: MetricSummary
    gold_logprob_per_byte: MetricSummary
    margin: MetricSummary
    score: MetricSummary | None = None  # None: written before per-example scores existed
    score_metric: str | None = None


class DomainSummary(BaseModel):
    bpb: MetricSummary
    bpb_pooled: float | None  # total nll / total bytes
    loss_per_token: float | None
    docs: int
    tokens: int
    bytes: int


class Summaries(BaseModel):
    tasks: dict[str, TaskSummary]
    domains: dict[str, DomainSummary]


class TaskSettingRecord(TypedDict, total=False):
    """One task's overrides of the eval defaults as hashed (api.TaskSetting, its None left out)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # keep any other key as written

    limit: int
    num_fewshot: int
    batch_size: int


class SettingsRecord(TypedDict, total=False):
    """eval.json's `settings`: those of an evaluation (api.EvalSettings.hashed: every key but
    `samples`), or the sample files of an imported one (driver/importer.py: `samples` alone)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # keep any other key as written

    limit: int | None
    num_fewshot: int
    seed: int
    task_settings: dict[str, TaskSettingRecord]
    samples: dict[str, str]  # task -> its lm-eval samples file


class EvalResult(BaseModel):
    """eval.json; `examples` are read from examples.jsonl by `load()` (not stored in eval.json)."""

    format: str = FORMAT
    key: str
    checkpoint: str
    tasks: list[str]
    include_path: str | None
    domains: dict[str, str]
    settings: SettingsRecord  # the settings hashed into `key` (limit, few-shot, per task, seed)
    tasks_key: str | None = None  # the part of `key` hashing what the tasks read (api.tasks_key)
    results: Summaries
    seconds: float
    timing: dict[str, float]

    @classmethod
    def load(cls, out: Path) -> EvalResult:
        """OUT/eval.json; a damaged one is a one-line error naming the file and the field."""
        f = Path(out) / "eval.json"
        return validate(cls, read_json(f), source=str(f))

    def lacks_scores(self) -> bool:
        """Written before tasks without an accuracy (generative ones) got per-example scores:
        evaluate again so that they count (multiple-choice records score by `acc` as they are)."""
        return any(t.score is None and t.acc.n == 0 for t in self.results.tasks.values())

    def examples(self, out: Path) -> Examples:
        return Examples.load(Path(out))


def mean_se(vals: list[float | None]) -> MetricSummary:
    x = np.array([v for v in vals if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(x) == 0:
        return MetricSummary(mean=None, stderr=None, n=0)
    se = float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else None
    return MetricSummary(mean=float(x.mean()), stderr=se, n=int(len(x)))


def summarise(records: list[TaskExample | DomainExample]) -> Summaries:
    tasks: dict[str, list[TaskExample]] = {}
    domains: dict[str, list[DomainExample]] = {}
    for r in records:
        if isinstance(r, TaskExample):
            tasks.setdefault(r.task, []).append(r)
        else:
            domains.setdefault(r.domain, []).append(r)
    return Summaries(
        tasks={name: _task_summary(rs) for name, rs in sorted(tasks.items())},
        domains={name: _domain_summary(rs) for name, rs in sorted(domains.items())},
    )


def _task_summary(rs: list[TaskExample]) -> TaskSummary:
    named = next((r.score_metric for r in rs if r.score_metric), None)
    return TaskSummary(**{m: mean_se([getattr(r, m) for r in rs]) for m in TASK_METRICS},
                       score_metric=named)  # fmt: skip


def _domain_summary(rs: list[DomainExample]) -> DomainSummary:
    nll, tok, byt = (sum(getattr(r, k) for r in rs) for k in ("nll", "tokens", "bytes"))
    return DomainSummary(
        bpb=mean_se([r.bpb for r in rs]),
        bpb_pooled=nll / (LN2 * byt) if byt else None,
        loss_per_token=nll / tok if tok else None,
        docs=len(rs),
        tokens=tok,
        bytes=byt,
    )


def sort_key(r: TaskExample | DomainExample) -> tuple[str, str, str, DocId]:
    name = r.task if isinstance(r, TaskExample) else r.domain
    return (r.kind, name, str(type(r.doc_id)), r.doc_id)


def to_json_line(r: TaskExample | DomainExample) -> str:
    return json.dumps(r.model_dump(), sort_keys=True, allow_nan=True) + "\n"


class Examples:
    """The per-example records of one evaluation, indexed by task (or domain) and doc_id."""

    def __init__(self, records: list[TaskExample | DomainExample]):
        self.tasks: dict[str, dict[DocId, TaskExample]] = {}
        self.domains: dict[str, dict[DocId, DomainExample]] = {}
        for r in records:
            if isinstance(r, TaskExample):
                self.tasks.setdefault(r.task, {})[r.doc_id] = r
            else:
                self.domains.setdefault(r.domain, {})[r.doc_id] = r

    @classmethod
    def load(cls, out: Path) -> Examples:
        records: list[TaskExample | DomainExample] = []
        with open(Path(out) / "examples.jsonl", encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                kind = rec.get("kind")
                if kind == "task":
                    records.append(TaskExample.model_validate(rec))
                elif kind == "domain":
                    records.append(DomainExample.model_validate(rec))
        return cls(records)

    def values(
        self, group: Literal["tasks", "domains"], key: str, metric: str
    ) -> dict[DocId, float] | None:
        """{doc_id: value} of `metric` for one task or domain (None when it was not evaluated)."""
        table = getattr(self, group).get(key)
        if table is None:
            return None
        out = {}
        for d, rec in table.items():
            v = getattr(rec, metric, None)
            if v is not None and math.isfinite(v):  # NaN/inf never reach a statistic
                out[d] = v
        return out

    def score(self, task: str, metric: str) -> float:
        """The task's mean of `metric` over its examples (nan when none has it)."""
        vals = list((self.values("tasks", task, metric) or {}).values())
        return float(np.mean(vals)) if vals else float("nan")

    def score_metric(self, task: str) -> str | None:
        """What the task's `score` is (acc, exact_match, pass@1; None when it has none)."""
        recs = self.tasks.get(task, {}).values()
        return next((r.score_metric for r in recs if r.score_metric and r.score is not None), None)

    def domain_bpb(self, domain: str) -> float:
        vals = list((self.values("domains", domain, "bpb") or {}).values())
        return float(sum(vals) / len(vals)) if vals else float("nan")
