"""Everything midtrain knows about lm-evaluation-harness, in one place.

midtrain runs lm-eval in process (`HFLM` around the loaded model, `simple_evaluate` with
`log_samples=True`) and changes four things about it, each checked against the installed version
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
- `TaskFactory._load_full_config` (a task's merged YAML config) makes relative `data_files` of a
  packaged datasets builder (`dataset_path: json`, ...) absolute against the YAML's folder, and a
  data file that does not exist a one-line error (task_files.py); lm-eval alone would read them
  from the working directory and fail inside datasets.

A task that runs the code the model writes (lm-eval's `unsafe_code`: HumanEval, MBPP) is refused
unless the caller allows code execution (`validate_tasks`, `run_tasks`).

It also reads lm-eval's task index for what a task reads from disk (`task_inputs`, part of the eval
cache key) and loads tasks without a model for `midtrain eval --check-tasks` (`preview_tasks`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import logging
import os
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from midtrain import env
from midtrain.errors import MidtrainError
from midtrain.eval import task_files
from midtrain.eval.task_files import TaskConfig

if TYPE_CHECKING:
    from lm_eval.api.task import Task
    from lm_eval.tasks._index import Entry

    from midtrain.eval.samples import LmEvalSample

SUPPORTED_RANGE = ">=0.4.12,<0.5"  # the same range as pyproject.toml's lm-eval requirement
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
    """The patches above, applied once per process; each target is checked to exist."""
    import lm_eval.evaluator
    import lm_eval.utils

    _patch_data_files()

    for name in ("add_env_info", "get_git_commit_hash"):
        if not hasattr(lm_eval.evaluator, name):
            raise MidtrainError(
                f"lm-eval {VERSION}: no evaluator.{name}; supported: {SUPPORTED_RANGE}"
            )
    _replace(lm_eval.evaluator, "add_env_info", lambda *a, **k: None)
    _replace(lm_eval.evaluator, "get_git_commit_hash", lambda: None)
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

    _replace(tenv, "from_string", from_string)
    tenv._midtrain_memoized = True


_PATCHED: list[tuple[Any, str, Any, Any]] = []  # (owner, attribute, lm-eval's own, ours)


def _replace(owner: Any, name: str, ours: Any) -> None:
    """Patch `owner.name` once per process, keeping lm-eval's own for `unpatched`."""
    if any(o is owner and n == name for o, n, _, _ in _PATCHED):
        return
    _PATCHED.append((owner, name, getattr(owner, name), ours))
    setattr(owner, name, ours)


@contextlib.contextmanager
def unpatched() -> Iterator[None]:
    """lm-eval as installed, our patches undone inside (the reference of `midtrain bench eval`);
    they are back on exit. Patches are applied when the first TaskManager is built."""
    for owner, name, theirs, _ in _PATCHED:
        setattr(owner, name, theirs)
    try:
        yield
    finally:
        for owner, name, _, ours in _PATCHED:
            setattr(owner, name, ours)


def _patch_data_files() -> None:
    from lm_eval.tasks._factory import TaskFactory

    load = getattr(TaskFactory, "_load_full_config", None)
    if load is None:
        raise MidtrainError(
            f"lm-eval {VERSION}: no TaskFactory._load_full_config; supported: {SUPPORTED_RANGE}"
        )
    if getattr(load, "_midtrain", False):
        return

    def load_full_config(self, entry, overrides=None):  # noqa: ANN001, ANN202 - lm-eval's signature
        cfg = load(self, entry, overrides)
        if getattr(entry, "yaml_path", None) is None:
            return cfg
        return task_files.absolute_data_files(cfg, Path(entry.yaml_path))

    load_full_config._midtrain = True  # type: ignore[attr-defined]
    _replace(TaskFactory, "_load_full_config", load_full_config)


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


_VALIDATED: dict[tuple[tuple[str, ...], str | None], list[str]] = {}  # -> its unsafe_code tasks


def validate_tasks(
    tasks: list[str], include_path: Path | None, field: str = "tasks", allow_code: bool = False
) -> None:
    """Every task must be known to lm-eval and its data loadable offline; a task that executes the
    model's code (lm-eval's `unsafe_code`) needs `allow_code`. Checked before any model."""
    key = (tuple(sorted(tasks)), str(include_path) if include_path else None)
    if not tasks:
        return
    if key not in _VALIDATED:
        loaded = load_tasks(tasks, include_path, field)
        _VALIDATED[key] = sorted(n for n, t in loaded.items() if getattr(t, "UNSAFE_CODE", False))
    if _VALIDATED[key] and not allow_code:
        raise MidtrainError(
            f"{field}: task {_VALIDATED[key][0]!r} runs the code the model writes (lm-eval marks "
            "it unsafe_code); allow it with allow_code_execution = true in [eval] "
            "(midtrain eval --allow-code-execution), in a sandbox, or leave the task out"
        )


def load_tasks(
    tasks: list[str], include_path: Path | None, field: str = "tasks"
) -> dict[str, Task]:
    """lm-eval's Task of every leaf task (a group gives its members), its data loaded; an unknown
    name or data that cannot be loaded offline is a one-line error naming the task."""
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
    loaded: dict[str, Task] = {}
    for task in tasks:
        try:
            with quiet():
                loaded.update(tm.load([task])["tasks"])
        except MidtrainError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure here means the data is not there
            reason = " ".join(str(e).split())[:160]
            raise MidtrainError(
                f"{field}: task {task!r}: its data could not be loaded offline "
                f"({type(e).__name__}: {reason}); make the dataset available locally"
            ) from None
    return loaded


def run_tasks(
    model: Any, tok: Any, tasks: list[str], include_path: Path | None, *, limit: int | None,
    num_fewshot: int, batch_size: int, max_length: int, seed: int, allow_code: bool = False,
) -> dict[str, list[LmEvalSample]]:  # fmt: skip
    """lm-eval's logged samples per task (`simple_evaluate(..., log_samples=True)["samples"]`).

    `allow_code` confirms lm-eval's unsafe_code tasks and sets `HF_ALLOW_CODE_EVAL=1` for the call
    (the `code_eval` metric of HF evaluate refuses without it)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    tm = task_manager(include_path)
    with quiet(), _code_eval(allow_code):
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, max_length=max_length)
        res = lm_eval.simple_evaluate(
            model=lm, tasks=tasks, task_manager=tm, limit=limit, num_fewshot=num_fewshot,
            log_samples=True, bootstrap_iters=0, random_seed=seed, numpy_random_seed=seed,
            torch_random_seed=seed, fewshot_random_seed=seed, verbosity="ERROR",
            confirm_run_unsafe_code=allow_code,
        )  # fmt: skip
    return res["samples"]


@contextlib.contextmanager
def _code_eval(allow: bool) -> Iterator[None]:
    """HF_ALLOW_CODE_EVAL=1 inside, when allowed; the variable as it was afterwards."""
    if not allow:
        yield
        return
    old = os.environ.get("HF_ALLOW_CODE_EVAL")
    os.environ["HF_ALLOW_CODE_EVAL"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_ALLOW_CODE_EVAL", None)
        else:
            os.environ["HF_ALLOW_CODE_EVAL"] = old


FILE_KEYS = ("dataset_path", "dataset_kwargs", "custom_dataset")  # the config keys naming files


class TaskInputs(TypedDict, total=False):
    """What one task, group or tag reads (`task_inputs`; hashed into the eval cache key)."""

    lm_eval: str  # one of the installed lm-eval's own tasks: its version
    tag: dict[str, TaskInputs]  # a tag: its tasks'
    files: list[str]  # content hashes of its YAMLs and `!function` modules (task_files.yaml_files)
    data: Any  # its data files' hashes, in the shape of `data_files` (task_files.data_inputs)
    members: dict[str, TaskInputs]  # a group: its members'


def task_inputs(tasks: list[str], include_path: Path | None) -> dict[str, TaskInputs]:
    """Per task: the content hashes of every file it reads (task_files.py), for the cache key.

    Names are looked up in an index of the include folder alone (lm-eval's own `TaskIndex`, built
    in milliseconds; the full TaskManager indexes every lm-eval task, ~5 s): a task found there
    wins over lm-eval's own of that name, as in lm-eval. A task not found there is one of the
    installed lm-eval, whose YAMLs ship with its version; its data comes from the HF cache.
    """
    index = local_index(include_path)
    return {name: _inputs(index, name, {}, 0) for name in sorted(set(tasks))}


def local_index(include_path: Path | None) -> dict[str, Entry]:
    """lm-eval's index (name -> Entry) of the task YAMLs below `include_path` only."""
    if include_path is None or not Path(include_path).is_dir():
        return {}
    env.setup()
    from lm_eval.tasks._index import TaskIndex

    with quiet():
        return TaskIndex.build([Path(include_path)])


def _inputs(index: dict[str, Entry], name: str, over: TaskConfig, depth: int) -> TaskInputs:
    """What task, group or tag `name` reads, with a parent group's overrides `over`."""
    from lm_eval.tasks._index import Kind

    entry = index.get(name)
    if entry is None or depth > 16:  # lm-eval's own task (or a group nested past reason)
        return {"lm_eval": VERSION}
    if entry.kind is Kind.TAG:
        return {"tag": {t: _inputs(index, t, over, depth + 1) for t in sorted(entry.tags)}}
    path = Path(entry.yaml_path) if entry.yaml_path else None
    files = [task_files.file_hash(p) for p in task_files.yaml_files(path)] if path else []
    raw: TaskConfig = entry.cfg or {}  # the YAML as lm-eval indexed it
    if entry.kind is not Kind.GROUP:
        cfg = {**raw, **over, "task": name}
        return {"files": files, "data": task_files.data_inputs(cfg, path) if path else None}
    sub = {**_file_keys(raw), **over}  # as lm-eval merges: the caller's overrides win
    members: dict[str, TaskInputs] = {}
    for item in raw.get("task") or []:
        ref = item if isinstance(item, str) else item.get("task") or item.get("group")
        if isinstance(ref, str):
            extra = _file_keys(item) if isinstance(item, dict) else {}
            members[ref] = _inputs(index, ref, {**sub, **extra}, depth + 1)
    return {"files": files, "members": members}


def _file_keys(cfg: TaskConfig) -> TaskConfig:
    return {k: cfg[k] for k in FILE_KEYS if k in cfg}


@dataclasses.dataclass
class TaskPreview:
    """One task as lm-eval loads it: what `midtrain eval --check-tasks` prints."""

    name: str
    output_type: str
    split: str  # the evaluation split (test, else validation)
    size: int  # documents in it
    prompt: str  # the first document's prompt, as the model sees it
    choices: list[str] | None  # multiple choice: the continuations scored
    target: Any  # the gold answer: a choice index, or the target text
    data_files: Any  # as read (relative paths resolved), None for a Hub dataset


def preview_tasks(
    tasks: list[str], include_path: Path | None, num_fewshot: int = 0
) -> list[TaskPreview]:
    """Load the tasks (no model) and render each one's first document; errors as `load_tasks`."""
    out = []
    for name, task in sorted(load_tasks(tasks, include_path).items()):
        docs = task.eval_docs
        doc, prompt = (docs[0] if len(docs) else None), ""
        if doc is not None:
            task.set_fewshot_seed(0)
            with quiet():
                prompt = task.fewshot_context(doc, num_fewshot)
        kwargs = task.config.dataset_kwargs or {}
        mc = task.OUTPUT_TYPE == "multiple_choice"
        out.append(TaskPreview(
            name=name, output_type=str(task.OUTPUT_TYPE), size=len(docs),
            split=task.config.test_split if task.has_test_docs() else task.config.validation_split,
            prompt=str(prompt),
            choices=list(task.doc_to_choice(doc)) if mc and doc is not None else None,
            target=task.doc_to_target(doc) if doc is not None else None,
            data_files=kwargs.get("data_files"),
        ))  # fmt: skip
    return out
