"""Streaming weighted average of checkpoints into a new HF folder (`midtrain merge`).

Memory stays near one output shard: each tensor is averaged in row chunks of at most
`CHUNK_ELEMS` elements (fp32, fp64 for F64 inputs), cast back to its dtype into the output
shard, and a shard is written with `safetensors.torch.save_file` as soon as it is full. Inputs are
read through `safe_open` (a private mmap of the whole file): pages it touches count in RSS until
the handle is dropped, so each input's handle is reopened after `MMAP_BUDGET / n` bytes.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ValidationError

from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, atomic_write_json, library_versions, read_json
from midtrain.merge.inputs import (
    INDEX,
    SINGLE,
    TOKENIZER_FILES,
    Checkpoint,
    TensorInfo,
    check_compatible,
    check_nonfloat_equal,
    check_out,
    normalise_weights,
    read_checkpoint,
)

if TYPE_CHECKING:
    import torch

FORMAT = "midtrain-merge/1"
RECORD = "merge.json"
MAX_SHARD_BYTES = 512 << 20  # output shards: the memory a merge holds besides small buffers
CHUNK_ELEMS = 1 << 22  # 16 MiB of fp32 accumulator per chunk
MMAP_BUDGET = 128 << 20  # touched mmapped input bytes (all inputs together) before reopening
SIDE_FILES = ("config.json", "generation_config.json", *TOKENIZER_FILES)  # never training state


class MergeInput(BaseModel):
    path: str  # absolute
    files: dict[str, dict[str, int]]  # weight file -> {"size", "mtime_ns"}


class MergeRecord(BaseModel):
    """OUT/merge.json: what a finished merge was made of."""

    format: Literal["midtrain-merge/1"] = FORMAT
    inputs: list[MergeInput]
    weights: list[float]  # normalised, one per input
    dtype: str  # the float dtype(s) of the tensors, e.g. "bfloat16"
    tensors: int
    total_size: int  # bytes of tensor data written
    shards: int
    wall_s: float
    versions: dict[str, str]


@dataclass
class MergeOutcome:
    record: MergeRecord
    already: bool  # OUT already held this merge: nothing was written


def merge_checkpoints(
    paths: list[str | Path],
    out: str | Path,
    weights: list[float] | None = None,
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> dict:
    """Average `paths` (uniform, or by `weights` normalised to sum 1) into the HF folder `out`.

    Returns the record written to OUT/merge.json. Every check runs before anything is written.
    """
    return run_merge(paths, out, weights, max_shard_bytes=max_shard_bytes).record.model_dump(
        mode="json"
    )


def run_merge(
    paths: list[str | Path],
    out: str | Path,
    weights: list[float] | None = None,
    *,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> MergeOutcome:
    t0 = time.perf_counter()
    out = Path(out)
    w = normalise_weights(weights, len(paths))
    ckpts = [read_checkpoint(p) for p in paths]
    check_compatible(ckpts)
    check_out(out, ckpts)
    inputs = [MergeInput(path=str(c.path.resolve()), files=c.file_stamps()) for c in ckpts]
    previous = _finished(out)
    if previous is not None and previous.inputs == inputs and previous.weights == w:
        return MergeOutcome(previous, already=True)
    if out.is_dir() and any(out.iterdir()):
        raise MidtrainError(
            f"merge: --out {out} exists and is not a finished merge of these inputs and weights; "
            "pass a new --out or delete it"
        )
    check_nonfloat_equal(ckpts)
    with atomic_dir(out, fsync=True) as tmp:
        shards, total = write_average(ckpts, w, tmp, max_shard_bytes)
        _copy_side_files(ckpts[0].path, tmp)
        record = MergeRecord(
            inputs=inputs,
            weights=w,
            dtype=_dtype_name(ckpts[0]),
            tensors=len(ckpts[0].tensors),
            total_size=total,
            shards=shards,
            wall_s=round(time.perf_counter() - t0, 3),
            versions=library_versions(),
        )
        atomic_write_json(tmp / RECORD, record.model_dump(mode="json"))
    return MergeOutcome(record, already=False)


def _finished(out: Path) -> MergeRecord | None:
    try:
        return MergeRecord.model_validate(read_json(out / RECORD))
    except (OSError, ValueError, ValidationError):
        return None


def _dtype_name(c: Checkpoint) -> str:
    names = sorted({_torch_dtype(t.dtype) for t in c.tensors.values() if t.is_float})
    return ",".join(str(n).removeprefix("torch.") for n in names) or "none"


def _torch_dtype(code: str) -> torch.dtype:
    import torch

    return {
        "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
        "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
        "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
    }[code]  # fmt: skip


def _copy_side_files(src: Path, dst: Path) -> None:
    """config, generation config and tokenizer of the first input; never training state."""
    for name in SIDE_FILES:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


# -- streaming -------------------------------------------------------------------------------------


class _Reader:
    """One input's tensors in row chunks through `safe_open`, reopened every `budget` bytes."""

    def __init__(self, ckpt: Checkpoint, budget: int):
        self.ckpt, self.budget = ckpt, budget
        self.file: str | None = None
        self.handle = None
        self.read = 0

    def rows(self, key: str, a: int, b: int) -> torch.Tensor:
        from safetensors import safe_open

        info = self.ckpt.tensors[key]
        if self.file != info.file or self.read >= self.budget:
            self.close()
            self.handle = safe_open(str(self.ckpt.path / info.file), "pt").__enter__()
            self.file = info.file
        if not info.shape:
            x = self.handle.get_tensor(key)
        else:
            x = self.handle.get_slice(key)[a:b]
        self.read += x.numel() * x.element_size()
        return x

    def close(self) -> None:
        if self.handle is not None:
            self.handle.__exit__(None, None, None)
        self.handle, self.file, self.read = None, None, 0


def plan_shards(ckpt: Checkpoint, max_bytes: int) -> list[list[str]]:
    """The first input's tensors in read order, packed into shards of at most `max_bytes`."""
    shards: list[list[str]] = [[]]
    size = 0
    for key in ckpt.keys_in_read_order():
        n = _nbytes(ckpt.tensors[key])
        if shards[-1] and size + n > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    return shards


def _nbytes(t: TensorInfo) -> int:
    n = 1
    for s in t.shape:
        n *= s
    return n * _torch_dtype(t.dtype).itemsize


class _Buffers:
    """Flat scratch buffers reused for every chunk: fresh 16-64 MiB allocations would be new
    zeroed pages from the kernel each time (most of a merge's system time)."""

    def __init__(self):
        self.flat: dict = {}

    def get(self, name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
        import torch

        n = 1
        for s in shape:
            n *= s
        buf = self.flat.get((name, dtype))
        if buf is None or buf.numel() < n:
            buf = self.flat[(name, dtype)] = torch.empty(max(n, CHUNK_ELEMS), dtype=dtype)
        return buf[:n].view(shape)


def average_tensor(key: str, info: TensorInfo, readers: list[_Reader], w: list[float], bufs):
    """The weighted average of `key` over the inputs, in row chunks, in the inputs' dtype.

    Each chunk: acc = w0 * float(x0) + w1 * float(x1) + ... (in input order), then cast back.
    """
    import torch

    dtype = _torch_dtype(info.dtype)
    rows = info.shape[0] if info.shape else 1
    if not info.is_float:
        return readers[0].rows(key, 0, rows).clone()  # equal in all inputs (checked)
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    out = torch.empty(info.shape, dtype=dtype)
    row_elems = max(1, out.numel() // max(rows, 1))
    step = max(1, CHUNK_ELEMS // row_elems)
    for a in range(0, rows, step):
        b = min(rows, a + step)
        dst = out[a:b] if info.shape else out
        acc = bufs.get("acc", acc_dtype, tuple(dst.shape))
        tmp = bufs.get("tmp", acc_dtype, tuple(dst.shape))
        for i, (r, wi) in enumerate(zip(readers, w, strict=True)):
            target = acc if i == 0 else tmp
            target.copy_(r.rows(key, a, b)).mul_(wi)
            if i:
                acc.add_(tmp)
        dst.copy_(acc)
    return out


def write_average(ckpts: list[Checkpoint], w: list[float], dst: Path, max_bytes: int):
    """Write the averaged weights into `dst`; returns (number of shards, bytes of tensor data)."""
    from safetensors.torch import save_file

    shards = plan_shards(ckpts[0], max_bytes)
    names = [SINGLE] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))
    ]  # fmt: skip
    readers = [_Reader(c, max(32 << 20, MMAP_BUDGET // len(ckpts))) for c in ckpts]
    weight_map, total, bufs = {}, 0, _Buffers()
    try:
        for name, keys in zip(names, shards, strict=True):
            tensors = {k: average_tensor(k, ckpts[0].tensors[k], readers, w, bufs) for k in keys}
            total += sum(t.numel() * t.element_size() for t in tensors.values())
            save_file(tensors, str(dst / name), metadata={"format": "pt"})
            del tensors
            weight_map.update(dict.fromkeys(keys, name))
    finally:
        for r in readers:
            r.close()
    if len(shards) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (dst / INDEX).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return len(shards), total
