"""tests/gpu: every test here needs a CUDA device (marker `gpu`) and is skipped without one, so
`make test` collects and skips them on a CPU machine and `make test-gpu` runs them (with
`midtrain bench gpu`; docs/benchmarks.md#gpu). Each module sets `pytestmark = pytest.mark.gpu`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: _train_fixtures


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 - pytest's hook signature
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if HERE in Path(item.path).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def world(tmp_path_factory):
    """The trainer tests' tiny world (tokenizer, `web` and `math` stores) and a tiny Llama
    saved as a HF folder without training state (the anneals' `init`)."""
    from _train_fixtures import build_world, save_tiny_model

    root = tmp_path_factory.mktemp("gpu-world")
    w = build_world(root)
    w["init"] = str(save_tiny_model(root, "llama", w["tokenizer"]))
    return w
