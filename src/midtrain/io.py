"""Atomic writes, content hashes and run metadata shared by every module."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results should honour the umask
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_jsonl(path: str | Path, rows: Any) -> Path:
    """One JSON object per line (an iterable of dicts), written atomically."""
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, to_json(obj))


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):  # numpy / torch scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    if dataclasses.is_dataclass(o) and not isinstance(o, type):
        return dataclasses.asdict(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


PAUSE_ENV = "MIDTRAIN_TEST_PAUSE"
KILL_ENV = "MIDTRAIN_TEST_KILL"  # "point:step": SIGKILL this process there (resume tests)


def fault_point(point: str, step: int) -> None:
    """Test hooks: die by SIGKILL at `point` of `step` when MIDTRAIN_TEST_KILL names it; sleep
    there when MIDTRAIN_TEST_PAUSE is `point:step:seconds` (a test acts while a run waits)."""
    if os.environ.get(KILL_ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
    pause = os.environ.get(PAUSE_ENV, "")
    if pause.rpartition(":")[0] == f"{point}:{step}":
        time.sleep(float(pause.rpartition(":")[2]))


def _old_sibling(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def recover_dir(final: str | Path) -> None:
    """Undo what a killed `atomic_dir` left: keep the last complete folder, drop temporaries.

    Call it only where one process owns `final` (a run directory under its lock).
    """
    final = Path(final)
    old = _old_sibling(final)
    if not final.exists() and old.exists():
        os.replace(old, final)  # killed between the two renames: the old one is complete
    shutil.rmtree(old, ignore_errors=True)
    for tmp in final.parent.glob(f".{glob_escape(final.name)}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, fsync: bool = False, step: int = -1) -> Iterator[Path]:
    """Build a directory under a temporary name and rename it into place on success.

    On any exception the temporary directory is removed, so `final` never holds a half-written
    result. An existing `final` is replaced only after the new one is complete: it is renamed to
    `.NAME.old`, the new one renamed in, the old one removed; `recover_dir` repairs a process
    killed between the two renames. `fsync` flushes every file first (checkpoints); `step` only
    feeds the `swap:NAME` test hook.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = _old_sibling(final)
    if not final.exists() and old.exists():
        os.replace(old, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        _settle_tree(tmp, fsync)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            fault_point(f"swap:{final.name}", step)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _settle_tree(root: Path, fsync: bool) -> None:
    """Give every file the umask's mode (some writers make 0600); flush it when `fsync`."""
    mode = 0o666 & ~_umask()
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(mode)
            if fsync:
                with open(p, "rb") as f:
                    os.fsync(f.fileno())


def hash_obj(obj: Any) -> str:
    """Stable sha256 of a JSON-serialisable object (sorted keys, compact)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_tree(path: str | Path, exclude: tuple[str, ...] = ()) -> str:
    """sha256 over the relative paths and contents of every file below `path` (sorted)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if not p.is_file() or any(rel.startswith(e) for e in exclude):
            continue
        h.update(rel.encode() + b"\0" + hash_file(p).encode() + b"\n")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("midtrain", "torch", "transformers", "tokenizers", "numpy", "lm_eval"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name.replace("_", "-"))
    return out


SLUG_MAX = 40


def slug(name: str) -> str:
    """A folder-safe, bounded form of an arm name (any Unicode name; the run id keeps it unique)."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name.replace("@", "-").replace("+", "_")).strip("._")
    if len(s) > SLUG_MAX or not s:
        s = f"{s[:SLUG_MAX]}-{hash_obj(name)[:8]}" if s else hash_obj(name)[:12]
    return s
