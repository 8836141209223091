"""Experiment trackers: Weights & Biases and TensorBoard as metric sinks of the run log.

A tracker is one more `MetricsSink` of `RunLog` (train/log.py): it receives every finished step
line (`step`, `tokens`, `lr`, `loss`, `grad_norm`, `tok_s`) after the JSONL log has it, on rank 0
only, and is closed when the run ends: done, or failed (diverged, interrupted, crashed). Both
packages are optional extras (`pip install 'midtrain[wandb]'`, `'midtrain[tensorboard]'`); a
missing one is a one-line error before training starts. W&B runs offline unless `WANDB_MODE` says
otherwise (sync later with `wandb sync OUT/wandb/offline-run-*`); TensorBoard writes OUT/tb/.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import model_validator

from midtrain.errors import MidtrainError
from midtrain.io import hash_obj
from midtrain.schema import Strict, field

Tracker = Literal["wandb", "tensorboard"]
MODULES = {"wandb": "wandb", "tensorboard": "torch.utils.tensorboard"}  # imported to check


class TrackersConfig(Strict):
    """Trackers given the step metrics too: `trackers = ["wandb"]`, or this table (W&B names)."""

    use: list[Tracker] = field([], description="wandb and/or tensorboard (default: none).")
    project: str = field("midtrain", description="W&B project.")
    name: str | None = field(None, description="W&B run name (default: the run folder's name).")

    @model_validator(mode="before")
    @classmethod
    def _list_shorthand(cls, data: Any) -> Any:
        return {"use": data} if isinstance(data, list) else data


class ClosableSink(Protocol):
    def log(self, row: Mapping[str, float], step: int) -> None: ...

    def close(self, failed: bool = False) -> None: ...


def check_installed(names: list[str], where: str = "trackers") -> None:
    """A one-line error naming the extra to install when a tracker's package is missing."""
    for name in names:
        try:
            importlib.import_module(MODULES[name])
        except ImportError:
            raise MidtrainError(
                f"{where}: {name} is not installed; pip install 'midtrain[{name}]'"
            ) from None


def is_rank0() -> bool:
    """Whether this process logs: rank 0 of a distributed run (torchrun sets RANK), or alone."""
    return int(os.environ.get("RANK", "0")) == 0


def open_sinks(
    cfg: TrackersConfig,
    out: Path,
    config: dict[str, Any],  # wandb.init's config: the run's config.json (RunPlan.resolved)
    start_step: int = 0,
) -> list[ClosableSink]:
    """The run's tracker sinks (none off rank 0); `start_step` > 0 when resuming."""
    if not cfg.use or not is_rank0():
        return []
    check_installed(cfg.use)
    return [SINKS[name](cfg, out, config, start_step) for name in cfg.use]


def close_sinks(sinks: list[ClosableSink], failed: bool = False) -> None:
    """`failed`: the run stopped on an exception (diverged, interrupted, crashed)."""
    for sink in sinks:
        sink.close(failed)


def _scalars(row: Mapping[str, float]) -> dict[str, float]:
    return {f"train/{k}": v for k, v in row.items() if k != "step" and v is not None}


class WandbSink:
    """A W&B run named after the run folder and resumed with it (its id is the folder's hash)."""

    def __init__(
        self,
        cfg: TrackersConfig,
        out: Path,
        config: dict[str, Any],  # wandb.init's config: the run's config.json
        start_step: int,
    ):
        import wandb

        mode = None if os.environ.get("WANDB_MODE") else "offline"
        self.run = wandb.init(
            project=cfg.project, name=cfg.name or out.name, id=hash_obj(str(out))[:16],
            resume="allow", dir=str(out), config=config, mode=mode,
        )  # fmt: skip

    def log(self, row: Mapping[str, float], step: int) -> None:
        self.run.log(_scalars(row), step=step)

    def close(self, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)  # W&B marks a nonzero exit as failed


class TensorBoardSink:
    """Scalars under OUT/tb/; a resumed run purges the events after the step it resumes from."""

    def __init__(
        self,
        cfg: TrackersConfig,
        out: Path,
        config: dict[str, Any],  # unused: W&B's run config (open_sinks)
        start_step: int,
    ):
        from torch.utils.tensorboard import SummaryWriter

        purge = start_step + 1 if start_step > 0 else None
        self.writer = SummaryWriter(log_dir=str(out / "tb"), purge_step=purge)

    def log(self, row: Mapping[str, float], step: int) -> None:
        for tag, value in _scalars(row).items():
            self.writer.add_scalar(tag, value, step)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


SINKS: dict[str, type[WandbSink] | type[TensorBoardSink]] = {
    "wandb": WandbSink,
    "tensorboard": TensorBoardSink,
}
