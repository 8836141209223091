"""megatron-core's own dataset code for the tests, or None where it cannot be loaded.

megatron-core 0.19.2 needs Python >= 3.12 (this project runs 3.11 in CI), and its package
`__init__` imports its whole training stack (triton and CUDA kernels). Two ways in:

1. installed (`pip install megatron-core==0.19.2` on Python >= 3.12): imported as usual;
2. `MIDTRAIN_MEGATRON_SRC=DIR`, DIR an unpacked megatron_core wheel (`unzip megatron_core-*.whl`):
   its `datasets/indexed_dataset.py` and `datasets/utils.py` are loaded from it as they are, with
   the package `__init__`s skipped and `megatron.core.utils` replaced by the one function those two
   files use (`log_single_rank`). That is how tests/fixtures/megatron was made
   (scripts/make_megatron_fixtures.py).
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "megatron"


def megatron_datasets() -> tuple[types.ModuleType, types.ModuleType] | None:
    """(indexed_dataset, utils) modules of megatron.core.datasets, or None."""
    return _load("megatron.core.datasets.indexed_dataset", "megatron.core.datasets.utils")


def megatron_scheduler() -> types.ModuleType | None:
    """megatron.core.optimizer_param_scheduler (OptimizerParamScheduler), or None."""
    found = _load("megatron.core.optimizer_param_scheduler")
    return found[0] if found else None


def _load(*names: str) -> tuple[types.ModuleType, ...] | None:
    try:
        return tuple(importlib.import_module(n) for n in names)
    except Exception:  # not installed, or its training stack cannot import here
        pass
    src = os.environ.get("MIDTRAIN_MEGATRON_SRC")
    if not src or not (Path(src) / "megatron" / "core" / "datasets").is_dir():
        return None
    root = Path(src) / "megatron"
    for name, path in (("megatron", root), ("megatron.core", root / "core")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg
    shim = types.ModuleType("megatron.core.utils")
    shim.log_single_rank = lambda logger, level, msg, *a, **k: logger.log(level, msg, *a, **k)
    sys.modules["megatron.core.utils"] = shim
    return tuple(importlib.import_module(n) for n in names)


def megatron_version() -> str:
    """megatron-core's version, installed or unpacked at MIDTRAIN_MEGATRON_SRC."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("megatron-core")
    except PackageNotFoundError:
        src = Path(os.environ.get("MIDTRAIN_MEGATRON_SRC", "."))
        found = sorted(src.glob("megatron_core-*.dist-info"))
        return (
            found[0].name[14:-10] + " (unpacked wheel)" if found else "?"
        )  # megatron_core-V.dist-info


def megatron_lrs(sched: types.ModuleType, args: list[str]) -> list[float]:
    """The LR of each iteration of a Megatron-LM run with these arguments, from megatron-core's
    own `OptimizerParamScheduler`. The mapping from arguments to the scheduler is Megatron-LM's
    `training.get_optimizer_param_scheduler` (--train-iters case; Megatron-LM is not on PyPI):
    steps are samples (iterations x --global-batch-size) and every iteration steps by one batch."""
    a = _parse(args)
    gbs = int(a["global-batch-size"])
    wsd = a.get("lr-wsd-decay-iters")
    opt = types.SimpleNamespace(param_groups=[{}])
    s = sched.OptimizerParamScheduler(
        opt, init_lr=0.0, max_lr=float(a["lr"]), min_lr=float(a["min-lr"]),
        lr_warmup_steps=int(a["lr-warmup-iters"]) * gbs,
        lr_decay_steps=int(a["lr-decay-iters"]) * gbs, lr_decay_style=a["lr-decay-style"],
        start_wd=0.0, end_wd=0.0, wd_incr_steps=int(a["train-iters"]) * gbs,
        wd_incr_style="constant", wsd_decay_steps=int(wsd) * gbs if wsd else None,
        lr_wsd_decay_style=a.get("lr-wsd-decay-style"),
    )  # fmt: skip
    lrs = []
    for _ in range(int(a["train-iters"])):
        lrs.append(float(opt.param_groups[0]["lr"]))
        s.step(gbs)
    return lrs


def _parse(args: list[str]) -> dict[str, str]:
    """--name value pairs (after the --data-path list)."""
    flags = [i for i, x in enumerate(args) if x.startswith("--")]
    return {args[i][2:]: args[i + 1] for i in flags if args[i] != "--data-path"}


def data_path(args: list[str]) -> list[str]:
    """The values of --data-path (up to the next flag)."""
    i = args.index("--data-path") + 1
    end = next((j for j in range(i, len(args)) if args[j].startswith("--")), len(args))
    return args[i:end]
