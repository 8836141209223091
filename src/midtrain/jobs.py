"""Jobs and stages: the typed contract between a plan, the executors and the cache.

A **stage** is one kind of work (`train`, `eval`; later `sft`, `merge`): a typed spec in, a typed
result out, written under a job directory. A stage registers itself with `@register` in its own
module; `Job` records that module, so a worker process (a spawned local worker, a Ray task)
imports it before running. Adding a stage is one new module: the runner, the executors and the
cache do not change.

A **job** is (stage, spec, directory). A **chain** is a list of jobs run in order by one worker
(e.g. train a run, then evaluate its final checkpoint); it stops at the first failure. A job whose
stage reports a cached result is skipped.
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_validator

from midtrain import env
from midtrain.errors import MidtrainError

BUILTIN_STAGES = {
    "train": "midtrain.train.stage",
    "external_train": "midtrain.train.external",
    "eval": "midtrain.eval.stage",
    "sft": "midtrain.sft.stage",
    "sft_eval": "midtrain.sft.stage",
    "merge": "midtrain.study.merging",
    "prune": "midtrain.study.keep",
}
STAGES: dict[str, Stage] = {}
PROCESSES_ENV = (
    "MIDTRAIN_PROCESSES"  # local ranks for the chain's train and sft stages (train/launch.py)
)


class Stage(ABC):
    """One kind of job: `run(spec, out)` computes a result; `cached(spec, out)` finds it again."""

    name: ClassVar[str]
    Spec: ClassVar[type[BaseModel]]
    Result: ClassVar[type[BaseModel]]

    @abstractmethod
    def run(self, spec: Any, out: Path) -> BaseModel:
        """Compute (or resume) the job in `out` and return its result."""

    @abstractmethod
    def cached(self, spec: Any, out: Path) -> BaseModel | None:
        """The finished result in `out`, or None when the job still has to run."""


def register(cls: type[Stage]) -> type[Stage]:
    """Class decorator: make a stage known by its `name`."""
    STAGES[cls.name] = cls()
    return cls


def get_stage(name: str, module: str | None = None) -> Stage:
    """The registered stage `name`, importing its module (or a built-in's) when needed."""
    if name not in STAGES:
        module = module or BUILTIN_STAGES.get(name)
        if module is None:
            raise MidtrainError(f"stage {name!r} is unknown; known: {', '.join(sorted(STAGES))}")
        importlib.import_module(module)
    if name not in STAGES:
        raise MidtrainError(f"stage {name!r}: module {module} did not register it")
    return STAGES[name]


class Job(BaseModel):
    """One stage applied to one spec, writing into `dir`."""

    model_config = ConfigDict(frozen=True)

    stage: str
    module: str  # the module that registers the stage (imported by worker processes)
    name: str  # label for progress lines, e.g. "math@0.3/s0"
    dir: str
    spec: SerializeAsAny[BaseModel]

    @model_validator(mode="before")
    @classmethod
    def _typed_spec(cls, data: Any) -> Any:
        """A spec read back from JSON becomes the stage's own Spec model again."""
        if isinstance(data, dict) and isinstance(data.get("spec"), dict):
            stage = get_stage(data["stage"], data.get("module"))
            data = {**data, "spec": stage.Spec.model_validate(data["spec"])}
        return data

    @classmethod
    def of(cls, stage: str, name: str, dir: str | Path, spec: BaseModel) -> Job:
        s = get_stage(stage)
        if not isinstance(spec, s.Spec):
            raise TypeError(f"stage {stage!r} takes a {s.Spec.__name__}, not {type(spec).__name__}")
        return cls(stage=stage, module=type(s).__module__, name=name, dir=str(dir), spec=spec)

    def cached(self) -> BaseModel | None:
        return get_stage(self.stage, self.module).cached(self.spec, Path(self.dir))

    def run(self) -> BaseModel:
        return get_stage(self.stage, self.module).run(self.spec, Path(self.dir))


Chain = list[Job]


class Outcome(BaseModel):
    """How a chain ended (what executors report)."""

    name: str
    dir: str
    status: Literal["done", "failed"]
    stage: str | None = None  # the stage that failed
    error: str | None = None
    traceback: str | None = None
    seconds: float | None = None
    attempts: int = 1


def pending(chain: Chain) -> bool:
    """Whether any job of the chain has no cached result yet."""
    return any(job.cached() is None for job in chain)


def run_chain(chain: Chain, threads: int = 0, attempts: int = 2, processes: int = 1) -> Outcome:
    """Run a chain's jobs in order (each skipped when cached), retrying a failure once; its
    training runs and SFT probes on `processes` local ranks each (train/launch.py).

    Never raises: a failure becomes an Outcome with the stage, the error and the traceback.
    """
    before = os.environ.get(PROCESSES_ENV)
    os.environ[PROCESSES_ENV] = str(processes)
    try:
        return _run_chain(chain, threads, attempts)
    finally:
        if before is None:
            os.environ.pop(PROCESSES_ENV, None)
        else:
            os.environ[PROCESSES_ENV] = before


def _run_chain(chain: Chain, threads: int, attempts: int) -> Outcome:
    env.setup(threads)
    t0, last, failed = time.perf_counter(), chain[-1], chain[0]
    for attempt in range(1, attempts + 1):
        try:
            for job in chain:
                failed = job
                if job.cached() is None:
                    job.run()
            return Outcome(name=last.name, dir=last.dir, status="done", attempts=attempt,
                           seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
        except MidtrainError as e:  # bad input or a diverged run: the same again would fail
            error, tb = str(e), traceback.format_exc()
            break
        except KeyboardInterrupt:  # SIGINT / SIGTERM (cli.py): the job's status says so
            from midtrain.train.rundir import mark_interrupted

            mark_interrupted(Path(failed.dir))
            raise
        except Exception as e:  # noqa: BLE001 - a failed job must not stop the study
            named = getattr(e, "one_line", False)  # its message names its field already
            error, tb = str(e) if named else f"{type(e).__name__}: {e}", traceback.format_exc()
    return Outcome(name=last.name, dir=failed.dir, status="failed", stage=failed.stage,
                   error=error, traceback=tb, attempts=attempt,
                   seconds=round(time.perf_counter() - t0, 1))  # fmt: skip
