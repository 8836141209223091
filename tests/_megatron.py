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
    try:
        from megatron.core.datasets import indexed_dataset, utils

        return indexed_dataset, utils
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
    return (
        importlib.import_module("megatron.core.datasets.indexed_dataset"),
        importlib.import_module("megatron.core.datasets.utils"),
    )
