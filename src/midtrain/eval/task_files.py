"""What an lm-eval task reads from disk, and its content hash (part of the eval cache key).

A task defined by a YAML reads: that YAML, the YAMLs it `include:`s (recursively), the Python file
of each `!function` tag (next to the YAML that names it, the way lm-eval resolves it) and the files
of its `dataset_kwargs.data_files` (a path, a list, or a dict of either by split; globs allowed).

Where relative data files are read from: with a packaged `datasets` builder (`dataset_path: json`,
`csv`, `parquet`, ...) lm-eval and datasets would read them from the working directory; midtrain
reads them from the task YAML's own folder instead (`absolute_data_files`, applied by `lmeval`
when lm-eval builds a task), and a data file that does not exist is a one-line error naming the
task, the YAML and the resolved path. With a `custom_dataset` function the function reads them
(midtrain passes them on unchanged and hashes those found next to the YAML); with a Hub dataset
they live in the Hub repository (nothing local to hash).

The hashes are of contents only, never of paths, so a task folder that moves keeps its key.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import os
from pathlib import Path
from typing import Any, TypedDict

import yaml

from midtrain.errors import MidtrainError
from midtrain.io import hash_file

GLOB_CHARS = frozenset("*?[")
FALLBACK_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas", "xml", "sql")


class DatasetKwargs(TypedDict, total=False):
    """A task config's `dataset_kwargs` (passed on to datasets' load_dataset): the key we read."""

    data_files: Any  # a path, a list of paths, or a dict of either by split (globs allowed)


class TaskConfig(TypedDict, total=False):
    """A task (or group) config as lm-eval's YAML loader returns it: the keys midtrain reads;
    lm-eval's other keys pass through untouched."""

    task: str | list[str | TaskConfig]  # a task's name; a group's members (names or configs)
    group: str
    include: str | list[str]  # YAMLs this one builds on
    dataset_path: str  # a Hub dataset, or a packaged builder (json, csv, ...)
    dataset_kwargs: DatasetKwargs
    custom_dataset: Any  # a `!function`: the function, or its reference before it is resolved


@functools.cache
def packaged_builders() -> frozenset[str]:
    """`dataset_path` values that name a datasets builder reading `data_files` (json, csv, ...)."""
    from datasets import packaged_modules

    return frozenset(getattr(packaged_modules, "_PACKAGED_DATASETS_MODULES", FALLBACK_BUILDERS))


def reads_local_files(cfg: TaskConfig) -> bool:
    """Whether datasets itself reads this task's `data_files` (a packaged builder, no
    `custom_dataset`): then relative paths are the task YAML's folder's."""
    return not cfg.get("custom_dataset") and cfg.get("dataset_path") in packaged_builders()


def _map(value: Any, fn: Any) -> Any:
    """`fn` applied to every path of a data_files value (str, list, dict of str/list)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, list | tuple):
        return [_map(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: _map(v, fn) for k, v in value.items()}
    return value


def _resolve(path: str, folder: Path) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return os.path.normpath(folder / path)


def _matches(path: str) -> list[Path]:
    """The local files a resolved data_files entry names (a glob may name several; URLs none)."""
    if "://" in path:
        return []
    if GLOB_CHARS & set(path):
        return [Path(p) for p in sorted(glob.glob(path, recursive=True)) if Path(p).is_file()]
    return [Path(path)] if Path(path).is_file() else []


def _check(task: str, yaml_path: Path, data_files: Any, resolved: Any) -> None:
    """A one-line error for the first data file that names nothing."""
    pairs: list[tuple[str, str, str]] = []

    def walk(raw: Any, res: Any, where: str) -> None:
        if isinstance(raw, str):
            pairs.append((where, raw, res))
        elif isinstance(raw, list | tuple):
            for i, (a, b) in enumerate(zip(raw, res, strict=True)):
                walk(a, b, f"{where}[{i}]")
        elif isinstance(raw, dict):
            for k in raw:
                walk(raw[k], res[k], f"{where}.{k}")

    walk(data_files, resolved, "data_files")
    for where, raw, res in pairs:
        if "://" in res or _matches(res):
            continue
        if Path(res).is_dir():
            raise MidtrainError(
                f"{yaml_path}: task {task!r}: {where} {raw!r} resolves to {res}, a folder; name "
                f"its files or a glob ({raw.rstrip('/')}/*.jsonl)"
            )
        what = "matches no file" if GLOB_CHARS & set(res) else "does not exist"
        raise MidtrainError(
            f"{yaml_path}: task {task!r}: {where} {raw!r} resolves to {res}, which {what} "
            "(relative data files are read from the YAML's folder); correct the path in the "
            "YAML or create the file"
        )


def absolute_data_files(cfg: TaskConfig, yaml_path: Path) -> TaskConfig:
    """`cfg` with its relative data files made absolute against the YAML's folder, every one
    checked to exist; unchanged when datasets does not read them itself (`reads_local_files`)."""
    kwargs = cfg.get("dataset_kwargs")
    if not isinstance(kwargs, dict) or kwargs.get("data_files") is None:
        return cfg
    if not reads_local_files(cfg):
        return cfg
    folder = Path(yaml_path).expanduser().resolve().parent
    resolved = _map(kwargs["data_files"], lambda p: _resolve(p, folder))
    _check(str(cfg.get("task")), Path(yaml_path), kwargs["data_files"], resolved)
    return {**cfg, "dataset_kwargs": {**kwargs, "data_files": resolved}}


def data_inputs(cfg: TaskConfig, yaml_path: Path) -> Any:
    """The content hashes of a task's data files, in the shape of its `data_files` (None when it
    names none; a URL stays as written: a remote file has nothing local to hash)."""
    kwargs = cfg.get("dataset_kwargs")
    if not isinstance(kwargs, dict) or kwargs.get("data_files") is None:
        return None
    if reads_local_files(cfg):
        files = absolute_data_files(cfg, yaml_path)["dataset_kwargs"]["data_files"]
    elif cfg.get("custom_dataset"):  # the function reads them: hash those next to the YAML
        folder = Path(yaml_path).expanduser().resolve().parent
        files = _map(kwargs["data_files"], lambda p: _resolve(p, folder))
    else:
        return kwargs["data_files"]  # files of a Hub dataset repository
    return _map(files, lambda p: [file_hash(m) for m in _matches(p)] if "://" not in p else p)


def _read_yaml(path: Path, functions: list[str]) -> Any:
    """A YAML file as lm-eval reads it, collecting its `!function` references."""
    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc, valid-type]
        pass

    def function(loader: yaml.Loader, node: yaml.Node) -> str:
        functions.append(loader.construct_scalar(node))  # type: ignore[arg-type]
        return functions[-1]

    Loader.add_constructor("!function", function)
    with path.open("rb") as f:
        return yaml.load(f, Loader=Loader)  # noqa: S506 - a SafeLoader plus one tag


def yaml_files(path: Path, seen: list[Path] | None = None) -> list[Path]:
    """The YAML, the YAMLs it includes (depth first) and its `!function` modules, in order."""
    seen = [] if seen is None else seen
    path = Path(path).expanduser().resolve()
    if path in seen or not path.is_file():
        return seen
    seen.append(path)
    functions: list[str] = []
    cfg = _read_yaml(path, functions)
    for spec in functions:
        module = spec.rpartition(".")[0]
        py = (path.parent / f"{module.replace('.', '/')}.py").resolve()
        if module and py.is_file() and py not in seen:
            seen.append(py)
    includes = cfg.get("include") if isinstance(cfg, dict) else None
    for inc in includes if isinstance(includes, list) else [includes] if includes else []:
        yaml_files(Path(inc) if Path(inc).is_absolute() else path.parent / inc, seen)
    return seen


def folder_hash(root: Path) -> str:
    """sha256 over the relative paths and contents of every file below `root` (as io.hash_tree,
    with each file's hash reused while its stat is unchanged)."""
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(
                p.relative_to(root).as_posix().encode() + b"\0" + file_hash(p).encode() + b"\n"
            )
    return h.hexdigest()


def file_hash(path: Path) -> str:
    """sha256 of a file's content, computed once per process while its stat (size, times,
    inode) stays the same: a study asks for the same task files once per run."""
    st = path.stat()
    return _hash(str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


@functools.lru_cache(maxsize=4096)
def _hash(path: str, size: int, mtime_ns: int, ctime_ns: int, ino: int) -> str:
    return hash_file(path)
