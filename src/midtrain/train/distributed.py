"""One run on many processes (`torchrun`): DDP or FSDP2 over the same deterministic mixer stream.

Each optimizer step's global batch is the single-process one: the step's `seqs_per_step`
sequences from the sampler, cut into micro batches of `micro_batch`; rank r takes micro batches
r, r + world, ... Each rank divides its summed token loss by `targets / world` and DDP/FSDP
average gradients over ranks, so the gradient is the single-process step's (up to summation
order). The logged loss is summed over ranks and divided by `world`: the step's mean loss.

Checkpoints: `state/` is a `torch.distributed.checkpoint` (DCP) folder of the model and optimizer
state (`dcp/`), one RNG file per rank and rank 0's `trainer.json`, built in one temporary folder
that rank 0 swaps in (`io.atomic_dir`), so a kill anywhere leaves the previous state usable.
`final/` is the single-process HF folder: rank 0 gathers the full state dicts and writes it.
With one process (no torchrun) none of this runs: the run is exactly the single-process one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, atomic_write_json, fault_point

PARALLEL = ("auto", "none", "ddp", "fsdp")


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (world 1: the plain single-process run)."""

    mode: str = "none"  # none | ddp | fsdp
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def resolve(parallel: str, environ: dict[str, str] | None = None) -> Dist:
    """The job from torchrun's env vars: WORLD_SIZE > 1 means distributed ('auto' = ddp)."""
    e = os.environ if environ is None else environ
    world = int(e.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return SINGLE
    if parallel == "none":
        raise MidtrainError(
            f"parallel: 'none' but WORLD_SIZE is {world} (torchrun); set parallel = 'ddp' or "
            "'fsdp', or run one process"
        )
    if "RANK" not in e:
        raise MidtrainError(
            f"parallel: WORLD_SIZE is {world} but RANK is not set; launch with torchrun"
        )
    mode = "ddp" if parallel == "auto" else parallel
    return Dist(mode, int(e["RANK"]), world, int(e.get("LOCAL_RANK", "0")))


def check_geometry(seqs_per_step: int, micro: int, d: Dist) -> None:
    """Every rank takes the same number of micro batches per step."""
    n = seqs_per_step // micro
    if n % d.world:
        good = seqs_per_step // d.world
        raise MidtrainError(
            f"micro_batch: {seqs_per_step} sequences per step in micro batches of {micro} make "
            f"{n} micro batches, not a multiple of the {d.world} processes (WORLD_SIZE); "
            f"set micro_batch to a divisor of {good} or raise batch_tokens"
        )


@contextmanager
def session(d: Dist, device: str) -> Iterator[None]:
    """The process group (nccl on CUDA, gloo on CPU) for the body; torn down after. FSDP2 on the
    host returns freed memory to the kernel (`return_freed_memory`)."""
    if not d.active:
        yield
        return
    import torch
    import torch.distributed as td

    if d.mode == "fsdp" and device == "cpu":
        return_freed_memory()
    if td.is_initialized():  # the caller's own process group (a Python API user under torchrun)
        yield
        return
    if device == "cuda":
        torch.cuda.set_device(d.local_rank)
        td.init_process_group("nccl", device_id=torch.device("cuda", d.local_rank))
    else:
        td.init_process_group("gloo")
    try:
        yield
        td.barrier()
    finally:
        td.destroy_process_group()


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters (glibc's malloc.h)


def return_freed_memory() -> None:
    """glibc only: every freed block of 128 KiB or more goes back to the kernel at once, for the
    rest of the process. glibc's defaults raise the mmap threshold as large blocks are freed (up to
    32 MiB) and keep freed blocks below it in the heap; an FSDP2 rank on the host all-gathers and
    frees each unit's parameters and gradients every layer, and its heap kept ~570 MiB at the peak
    (162M Llama, `midtrain bench memory`: a rank's peak 2,132 MiB with the defaults, 1,560 with
    this). The cost is page faults: 14-25% more wall time there. Thresholds the user set in the
    environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES) are left alone."""
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc" or _user_malloc_settings():
        return
    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)  # a fixed value: no dynamic threshold
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)


def _user_malloc_settings() -> bool:
    e = os.environ
    return any(k in e for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")) or any(
        t in e.get("GLIBC_TUNABLES", "") for t in ("malloc.mmap_threshold", "malloc.trim_threshold")
    )


def barrier(d: Dist) -> None:
    if d.active:
        import torch.distributed as td

        td.barrier()


def broadcast(d: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every rank."""
    if not d.active:
        return obj
    import torch.distributed as td

    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


# -- the model, the batches, the step ----------------------------------------------------------


def on_meta(d: Dist) -> bool:
    """Under FSDP2, ranks > 0 build the model on the meta device (no memory) and get rank 0's
    weights and AdamW moments shard by shard once it is sharded: one full copy per node, not one
    per rank (rank 0 loads the checkpoint; `parallelize` broadcasts)."""
    return d.mode == "fsdp" and d.rank > 0


def load_device(d: Dist, device: str) -> str:
    """Where a rank loads the checkpoint: FSDP2's rank 0 on the host (the whole model need not
    fit one GPU; its shards move after sharding), every other run on its device."""
    return "cpu" if d.mode == "fsdp" else device


def parallelize(model: Any, opt: Any, make_opt: Callable[[list[Any]], Any], d: Dist,
                device: str = "cpu") -> tuple:  # fmt: skip
    """Wrap the model (DDP, or FSDP2 per block then the root); a new optimizer on its parameters
    carrying `opt`'s state (warm-start moments). Returns (model, optimizer, params)."""
    import torch
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    carried = get_optimizer_state_dict(model, opt) if opt.state else None
    full = model.state_dict() if d.mode == "fsdp" and d.main else None  # before sharding
    if d.mode == "ddp":
        cuda = next(model.parameters()).is_cuda
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[d.local_rank] if cuda else None
        )
    elif d.mode == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError:
            raise MidtrainError(
                f"parallel: 'fsdp' needs FSDP2 (torch >= 2.6, this is {torch.__version__}); "
                "upgrade torch or use parallel = 'ddp'"
            ) from None

        for m in _fsdp_units(model):
            fully_shard(m)
        fully_shard(model)
        _weights_from_rank0(model, full, d, device)
    else:
        raise MidtrainError(f"parallel: unknown mode {d.mode!r}; use one of {PARALLEL}")
    params = [p for p in model.parameters() if p.requires_grad]
    new = make_opt(params)
    if d.mode == "fsdp" and broadcast(d, carried is not None):  # rank 0's moments, shard by shard
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_optimizer_state_dict(model, new, carried or {}, options=opts)
    elif d.mode == "ddp" and carried is not None:
        set_optimizer_state_dict(
            model, new, carried, options=StateDictOptions(full_state_dict=True)
        )
    return model, new, params


def _fsdp_units(model: Any) -> list[Any]:
    """The modules that get an FSDP2 unit of their own before the root: every decoder block, then
    the input embedding and the output head when their weights are not tied (torchtitan's order).
    Each unit is gathered only while it runs and resharded after, so the root keeps only the
    final norm; tied embedding and head stay together in the root (one parameter, one unit)."""
    blocks = set(getattr(model, "_no_split_modules", None) or ())
    units = [m for m in model.modules() if type(m).__name__ in blocks]
    emb, head = _module(model, "get_input_embeddings"), _module(model, "get_output_embeddings")
    tied = emb is not None and head is not None and head.weight is emb.weight
    return units + ([] if tied else [m for m in (emb, head) if m is not None])


def _module(model: Any, getter: str) -> Any:
    """`model.get_input_embeddings()` or the like; None where the model has no such module."""
    try:
        m = getattr(model, getter)()
    except (AttributeError, NotImplementedError):
        return None
    return m if hasattr(m, "weight") else None


def _weights_from_rank0(model: Any, full: dict | None, d: Dist, device: str) -> None:
    """After `fully_shard`: ranks > 0 (built on meta) get storage, then every shard and buffer
    (the non-persistent rotary tables included) takes rank 0's values."""
    import torch.distributed as td
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if on_meta(d):
        model.to_empty(device=device)
    else:  # rank 0 loaded the model on the host (`load_device`): only its shards move
        model.to(device)
    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full or {}, options=opts)
    for b in model.buffers():
        td.broadcast(b, src=0)


def unwrap(model: Any) -> Any:
    """The HF model under a DDP wrapper (FSDP2 shards in place: the model itself)."""
    return getattr(model, "module", model)


def rank_batches(sampler: Any, spb: int, micro: int, n_targets: int, device: str, d: Dist):
    """The step's micro batches r, r + world, ... and the divisor `targets / world`."""
    import torch

    starts = range(d.rank * micro, spb, d.world * micro)

    def batches(step: int) -> tuple[Sequence[Any], float]:
        first = step * spb
        return [
            torch.from_numpy(sampler.sequences(first + s, micro)).to(device) for s in starts
        ], n_targets / d.world

    return batches


def grad_sync(model: Any, d: Dist) -> Callable[[bool], Any]:
    """DDP: all-reduce only on the step's last micro batch (`no_sync` before). FSDP2
    reduce-scatters every micro batch (no unsharded gradients kept between them)."""
    if d.mode == "ddp":
        return lambda last: nullcontext() if last else model.no_sync()
    return lambda last: nullcontext()


def reduce_metrics(d: Dist) -> Callable[[Any, Any], tuple[Any, Any]]:
    """The step's loss summed over ranks / world (each rank's is world x its share); a sharded
    (DTensor) grad norm made a plain tensor."""
    import torch.distributed as td

    def reduce(loss: Any, grad_norm: Any) -> tuple[Any, Any]:
        loss = loss.clone()
        td.all_reduce(loss, op=td.ReduceOp.SUM)
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        return loss / d.world, grad_norm

    return reduce


# -- checkpoints -------------------------------------------------------------------------------

STATE_DIR = (
    "midtrain_state"  # = checkpoint.STATE_DIR (not imported: checkpoint imports torch types)
)
DCP_DIR = "dcp"


def has_state(resume: Path) -> bool:
    return (resume / DCP_DIR / ".metadata").is_file()


@contextmanager
def shared_dir(final: Path, d: Dist, step: int) -> Iterator[Path]:
    """`io.atomic_dir` for all ranks: rank 0 makes the temporary folder and swaps it in once
    every rank has written its part."""
    if d.main:
        with atomic_dir(final, fsync=True, step=step) as tmp:
            broadcast(d, str(tmp))
            yield tmp
            barrier(d)  # every rank's files are written
    else:
        tmp = Path(broadcast(d, None))
        yield tmp
        barrier(d)
    barrier(d)  # the swap is done


def save_state(path: Path, model: Any, opt: Any, trainer: dict, rng: Any, d: Dist, step: int):
    """OUT/state: DCP model + optimizer, this rank's RNG, rank 0's trainer.json; atomic."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    with shared_dir(path, d, step) as tmp:
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp / DCP_DIR)
        fault_point(f"save:{path.name}", step)  # model and optimizer written, RNG/trainer not
        sdir = tmp / STATE_DIR
        sdir.mkdir(exist_ok=True)
        torch.save(rng, sdir / f"rng-{d.rank}.pt")
        if d.main:
            atomic_write_json(sdir / "trainer.json", trainer)


def load_state(path: Path, model: Any, opt: Any, d: Dist) -> Any:
    """Load OUT/state's DCP model + optimizer into the wrapped model; this rank's RNG states."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, opt)
    sd = {"model": model_sd, "optim": optim_sd}
    dcp.load(sd, checkpoint_id=path / DCP_DIR)
    set_state_dict(model, opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])
    f = path / STATE_DIR / f"rng-{d.rank}.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def full_state(model: Any, opt: Any) -> tuple[dict, dict]:
    """(model, optimizer) full state dicts on rank 0's CPU (empty elsewhere); the optimizer's
    keyed by parameter index like `Optimizer.state_dict()` (the single-process optimizer.pt)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, opt, options=opts)
    if not osd:
        return weights, osd
    ids: dict[str, int] = {}
    groups = [
        {**g, "params": [ids.setdefault(f, len(ids)) for f in g["params"]]}
        for g in osd["param_groups"]
    ]
    return weights, {"state": {ids[f]: v for f, v in osd["state"].items()}, "param_groups": groups}


def check_resume(saved: Any, d: Dist) -> None:
    """OUT/state (its `RunPosition`) is resumed by as many processes, in the same mode, as wrote
    it (DCP could reshard, but the per-rank RNG streams could not follow)."""
    if saved is None:
        return
    world, mode = saved.world_size or 1, saved.parallel or "none"
    if (world, mode) != (d.world, d.mode):
        how = "one process (no torchrun)" if world == 1 else (
            f"`torchrun --nproc-per-node {world}` and parallel = {mode!r}")  # fmt: skip
        raise MidtrainError(
            f"--out state: written by {world} process(es) (parallel {mode!r}) but resumed by "
            f"{d.world} ({d.mode!r}); resume with {how}, or use a new --out"
        )
