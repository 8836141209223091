"""The inputs of a merge: HF checkpoint folders read through their safetensors headers, and
every check that runs before anything is written.

Headers are parsed directly (8-byte little-endian length, then JSON), so the checks need no
torch and touch no tensor data, except the non-float tensors (small integer buffers), which must
be equal across inputs and are compared here.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midtrain.errors import MidtrainError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
# config.json keys that say how or where a checkpoint was saved, not what the model is
BOOKKEEPING = frozenset(
    {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "_commit_hash",
     "_attn_implementation_autoset"}
)  # fmt: skip
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "vocab.txt", "added_tokens.json", "chat_template.jinja",
    "chat_template.json",
)  # fmt: skip
FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")  # averaged; F8/F4 are scaled formats: refused


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a checkpoint, as its safetensors header describes it."""

    file: str  # file name inside the checkpoint folder
    dtype: str  # safetensors dtype code: BF16, F32, I64, ...
    shape: tuple[int, ...]
    offset: int  # start of its data inside the file's data section (read order)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


@dataclass
class Checkpoint:
    """An input folder: its config, weight files (read order) and tensors."""

    path: Path
    config: dict[str, Any]  # its config.json: HF's, any model type's keys
    files: list[str]
    tensors: dict[str, TensorInfo]

    def file_stamps(self) -> dict[str, dict[str, int]]:
        """Size and mtime of each weight file: what `merge.json` records to recognise its inputs."""
        out = {}
        for name in [*self.files, *([INDEX] if (self.path / INDEX).is_file() else [])]:
            st = (self.path / name).stat()
            out[name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        return out

    def keys_in_read_order(self) -> list[str]:
        order = {f: i for i, f in enumerate(self.files)}
        return sorted(
            self.tensors, key=lambda k: (order[self.tensors[k].file], self.tensors[k].offset)
        )


# -- reading ---------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path) -> Checkpoint:
    """A HF folder with config.json and safetensors weights, else a one-line error."""
    path = Path(path)
    where = f"merge: {path}"
    if not (path / "config.json").is_file():
        raise MidtrainError(
            f"{where} is not a HF model folder (no config.json); pass folders saved with "
            "save_pretrained"
        )
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MidtrainError(f"{where}: config.json is not valid JSON ({e}); restore it") from None
    if not isinstance(config, dict):
        raise MidtrainError(f"{where}: config.json is not a JSON object; restore it")
    files, weight_map = _weight_files(path)
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        tensors.update(_read_header(path, f))
    if weight_map is not None and set(weight_map) != set(tensors):
        bad = sorted(set(weight_map) ^ set(tensors))[:3]
        raise MidtrainError(
            f"{where}: {INDEX} and the shards disagree on tensors ({', '.join(bad)}); "
            "re-save the checkpoint"
        )
    return Checkpoint(path, config, files, tensors)


def _weight_files(path: Path) -> tuple[list[str], dict[str, str] | None]:
    """The safetensors files of a folder (sharded through the index or one file)."""
    if (path / INDEX).is_file():
        try:
            weight_map = json.loads((path / INDEX).read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise MidtrainError(
                f"merge: {path / INDEX} is not a safetensors index ({type(e).__name__}); "
                "re-save the checkpoint"
            ) from None
        for f in files:
            if not (path / f).is_file():
                raise MidtrainError(
                    f"merge: {path}: shard {f} named by {INDEX} is missing; restore or re-save it"
                )
        return files, weight_map
    if (path / SINGLE).is_file():
        return [SINGLE], None
    raise MidtrainError(
        f"merge: {path} has no safetensors weights ({SINGLE} or {INDEX}); re-save it with "
        "save_pretrained(safe_serialization=True)"
    )


def _read_header(path: Path, name: str) -> dict[str, TensorInfo]:
    f = path / name
    try:
        size = f.stat().st_size
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 2 <= n <= size - 8:
                raise ValueError(f"header length {n} in a file of {size} bytes")
            header = json.loads(fh.read(n))
        header.pop("__metadata__", None)
        out, end = {}, 0
        for key, v in header.items():
            a, b = (int(x) for x in v["data_offsets"])
            out[key] = TensorInfo(name, str(v["dtype"]), tuple(int(s) for s in v["shape"]), a)
            end = max(end, b)
        if 8 + n + end != size:
            raise ValueError(f"data ends at byte {8 + n + end}, the file has {size}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise MidtrainError(
            f"merge: {f} is not a complete safetensors file ({e}); restore or re-save it"
        ) from None
    return out


# -- checks ----------------------------------------------------------------------------------------


def check_compatible(ckpts: list[Checkpoint]) -> None:
    """Every input against the first: architecture, config, tensors, tokenizer."""
    first = ckpts[0]
    for c in ckpts[1:]:
        _check_config(first, c)
        _check_tensors(first, c)
        _check_tokenizer(first, c)
    for key, t in first.tensors.items():
        if t.dtype.startswith(("F8", "F4", "F6")):
            raise MidtrainError(
                f"merge: tensor {key} of {first.path} is {t.dtype}, a scaled format averaging "
                "would corrupt; dequantize the checkpoints first"
            )


def _arch(c: Checkpoint) -> tuple[Any, Any]:
    return c.config.get("model_type"), c.config.get("architectures")


def _check_config(a: Checkpoint, b: Checkpoint) -> None:
    if _arch(a) != _arch(b):
        raise MidtrainError(
            f"merge: {b.path} is a {_arch(b)[0]} model {_arch(b)[1]}, {a.path} a {_arch(a)[0]} "
            f"model {_arch(a)[1]}; merge checkpoints of one architecture"
        )
    keys = sorted((set(a.config) | set(b.config)) - BOOKKEEPING)
    diff = [k for k in keys if a.config.get(k) != b.config.get(k)]
    if diff:
        shown = ", ".join(f"{k} {a.config.get(k)!r} vs {b.config.get(k)!r}" for k in diff[:3])
        raise MidtrainError(
            f"merge: config.json of {b.path} differs from {a.path} ({shown}); merge checkpoints "
            "of one model config (runs that differ only in data or seed)"
        )


def _check_tensors(a: Checkpoint, b: Checkpoint) -> None:
    if set(a.tensors) != set(b.tensors):
        extra, missing = (
            sorted(set(b.tensors) - set(a.tensors)),
            sorted(set(a.tensors) - set(b.tensors)),
        )
        raise MidtrainError(
            f"merge: {b.path} has other tensors than {a.path} (extra: {', '.join(extra[:3]) or '-'}; "
            f"missing: {', '.join(missing[:3]) or '-'}); merge checkpoints of one model"
        )
    for key, ta in a.tensors.items():
        tb = b.tensors[key]
        if ta.shape != tb.shape:
            raise MidtrainError(
                f"merge: tensor {key} has shape {list(tb.shape)} in {b.path}, {list(ta.shape)} "
                f"in {a.path}; merge checkpoints of one model"
            )
        if ta.dtype != tb.dtype:
            raise MidtrainError(
                f"merge: tensor {key} is {tb.dtype} in {b.path}, {ta.dtype} in {a.path}; save "
                "all checkpoints in one dtype"
            )


def tokenizer_digest(path: Path) -> dict[str, str]:
    """sha256 of each tokenizer file present (tokenizer_config.json without `name_or_path`)."""
    out = {}
    for name in TOKENIZER_FILES:
        f = path / name
        if not f.is_file():
            continue
        data = f.read_bytes()
        if name == "tokenizer_config.json":
            try:
                cfg = json.loads(data)
                cfg.pop("name_or_path", None)
                data = json.dumps(cfg, sort_keys=True).encode()
            except (ValueError, AttributeError):
                pass  # not JSON: compare the bytes
        out[name] = hashlib.sha256(data).hexdigest()
    return out


def _check_tokenizer(a: Checkpoint, b: Checkpoint) -> None:
    da, db = tokenizer_digest(a.path), tokenizer_digest(b.path)
    if da != db:
        diff = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
        raise MidtrainError(
            f"merge: the tokenizer of {b.path} differs from {a.path} ({', '.join(diff)}); merge "
            "checkpoints trained with one tokenizer"
        )


def check_nonfloat_equal(ckpts: list[Checkpoint]) -> None:
    """Integer and bool tensors are not averaged: they must be equal in every input."""
    import torch
    from safetensors import safe_open

    first = ckpts[0]
    for key, info in first.tensors.items():
        if info.is_float:
            continue
        with safe_open(str(first.path / info.file), "pt") as f:
            ref = f.get_tensor(key).clone()
        for c in ckpts[1:]:
            with safe_open(str(c.path / c.tensors[key].file), "pt") as f:
                same = torch.equal(ref, f.get_tensor(key))
            if not same:
                raise MidtrainError(
                    f"merge: non-float tensor {key} ({info.dtype}) differs between {first.path} "
                    f"and {c.path}; integer buffers cannot be averaged, merge checkpoints that "
                    "agree on them"
                )


def normalise_weights(weights: list[float] | None, n: int) -> list[float]:
    """One weight >= 0 per checkpoint, scaled to sum 1 (uniform when None)."""
    if n < 2:
        raise MidtrainError(f"merge: got {n} checkpoint; pass at least 2 checkpoint folders")
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise MidtrainError(
            f"merge: --weights has {len(weights)} values for {n} checkpoints; pass one per checkpoint"
        )
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise MidtrainError(f"merge: --weights {weights}: each must be a finite number >= 0")
    total = math.fsum(weights)
    if total <= 0:
        raise MidtrainError("merge: --weights sum to 0; give at least one checkpoint a weight > 0")
    return [w / total for w in weights]


def parse_weights(text: str | None) -> list[float] | None:
    """`--weights 1,3` as floats (not yet normalised)."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise MidtrainError(
            f"merge: --weights {text!r} is not a comma-separated list of numbers; "
            "pass e.g. --weights 0.5,0.5"
        ) from None


def check_out(out: Path, ckpts: list[Checkpoint]) -> None:
    """--out is neither an input nor inside one (nor holds one)."""
    o = out.resolve()
    for c in ckpts:
        p = c.path.resolve()
        if o == p or o.is_relative_to(p) or p.is_relative_to(o):
            raise MidtrainError(
                f"merge: --out {out} overlaps the input {c.path}; write the merge to a new folder"
            )
    if o.exists() and not o.is_dir():
        raise MidtrainError(f"merge: --out {out} is a file; pass a folder path")
