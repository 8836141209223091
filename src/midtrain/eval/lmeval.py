"""Everything midtrain knows about lm-evaluation-harness, in one place.

midtrain runs lm-eval in process (`HFLM` around the loaded model, `simple_evaluate` with
`log_samples=True`) and changes three things about it, each checked against the installed version
when this module is imported (`SUPPORTED`; outside it, a one-line error names the range):

- `lm_eval.evaluator.add_env_info` and `get_git_commit_hash` are replaced by no-ops: they collect
  torch's environment report and the working directory's git commit through subprocesses on every
  call (~0.5 s, and "fatal: not a git repository" on stderr outside a checkout); run directories
  record library versions already.
- `lm_eval.utils.env.from_string` is memoized: lm-eval compiles a task's Jinja template from its
  string for every document and field (~1.5 s of a 5 s demo eval); a string always compiles to the
  same template.
- lm-eval's and datasets' logging and tqdm bars are silenced around each call (`quiet()`); bars stay
  on a terminal, where they redraw in place.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from midtrain import env
from midtrain.errors import MidtrainError

SUPPORTED_RANGE = ">=0.4.5,<0.5"  # the same range as pyproject.toml's lm-eval requirement
SUPPORTED = SpecifierSet(SUPPORTED_RANGE)


def check_version(installed: str | None = None) -> str:
    """The installed lm-eval version, or a one-line error when it is outside `SUPPORTED`."""
    installed = installed or metadata.version("lm_eval")
    if Version(installed) not in SUPPORTED:
        raise MidtrainError(
            f"lm-eval {installed} is installed but midtrain supports lm-eval {SUPPORTED_RANGE}; "
            f"pip install 'lm-eval[hf]{SUPPORTED_RANGE}'"
        )
    return installed


VERSION = check_version()


def _patch() -> None:
    """The two patches above, applied once per process; each target is checked to exist."""
    import lm_eval.evaluator
    import lm_eval.utils

    for name in ("add_env_info", "get_git_commit_hash"):
        if not hasattr(lm_eval.evaluator, name):
            raise MidtrainError(
                f"lm-eval {VERSION}: no evaluator.{name}; supported: {SUPPORTED_RANGE}"
            )
    lm_eval.evaluator.add_env_info = lambda *a, **k: None
    lm_eval.evaluator.get_git_commit_hash = lambda: None
    tenv = getattr(lm_eval.utils, "env", None)
    if tenv is None or not hasattr(tenv, "from_string"):
        raise MidtrainError(
            f"lm-eval {VERSION}: no utils.env Jinja environment; supported: {SUPPORTED_RANGE}"
        )
    if getattr(tenv, "_midtrain_memoized", False):
        return
    compile_uncached = tenv.from_string
    cached = functools.lru_cache(maxsize=4096)(compile_uncached)

    def from_string(source, *args, **kwargs):
        if args or kwargs or not isinstance(source, str):
            return compile_uncached(source, *args, **kwargs)
        return cached(source)

    tenv.from_string = from_string
    tenv._midtrain_memoized = True


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """lm-eval and datasets log a lot at INFO/WARNING; keep the terminal for our own lines.

    When stderr is a file or a pipe (CI, `> log`) every tqdm redraw would be a new line, so bars
    are dropped there. Errors still surface as exceptions; logging handlers keep the real stderr.
    """
    loggers = [logging.getLogger(n) for n in ("lm_eval", "lm-eval", "datasets", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    bars = (
        contextlib.nullcontext()
        if sys.stderr.isatty()
        else contextlib.redirect_stderr(io.StringIO())
    )
    try:
        with contextlib.redirect_stdout(io.StringIO()), bars:
            yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


def task_manager(include_path: Path | None) -> Any:
    """One TaskManager per include path and process: building one indexes every task (~5 s)."""
    return _cached_task_manager(str(Path(include_path).resolve()) if include_path else None)


@functools.lru_cache(maxsize=8)
def _cached_task_manager(include_path: str | None) -> Any:
    env.setup()
    from lm_eval.tasks import TaskManager

    _patch()
    with quiet():
        return TaskManager(include_path=include_path)


_VALIDATED: set[tuple[tuple[str, ...], str | None]] = set()


def validate_tasks(tasks: list[str], include_path: Path | None, field: str = "tasks") -> None:
    """Every task must be known to lm-eval and its data loadable offline; checked before any model."""
    key = (tuple(sorted(tasks)), str(include_path) if include_path else None)
    if not tasks or key in _VALIDATED:
        return
    if include_path is not None and not Path(include_path).is_dir():
        raise MidtrainError(f"include_path: {include_path} is not a folder of task YAMLs")
    tm = task_manager(include_path)
    known = set(tm.all_tasks)
    for task in tasks:
        if task not in known:
            hint = (
                "" if include_path else " (a task folder needs --include-path / eval.include_path)"
            )
            raise MidtrainError(
                f"{field}: task {task!r} is not known to lm-eval; check the name{hint}"
            )
    from lm_eval.tasks import get_task_dict

    for task in tasks:
        try:
            with quiet():
                get_task_dict([task], tm)
        except Exception as e:  # noqa: BLE001 - any failure here means the data is not there
            reason = " ".join(str(e).split())[:160]
            raise MidtrainError(
                f"{field}: task {task!r}: its data could not be loaded offline "
                f"({type(e).__name__}: {reason}); make the dataset available locally"
            ) from None
    _VALIDATED.add(key)


def run_tasks(
    model: Any, tok: Any, tasks: list[str], include_path: Path | None, *, limit: int | None,
    num_fewshot: int, batch_size: int, max_length: int, seed: int,
) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """lm-eval's logged samples per task (`simple_evaluate(..., log_samples=True)["samples"]`)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tm = task_manager(include_path)
    with quiet():
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length)
        res = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
            log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR",
        )  # fmt: skip
    return res["samples"]
