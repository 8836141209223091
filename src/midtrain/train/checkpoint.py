"""Checkpoints: HF causal-LM folders, plus our training state when we wrote them.

```
CKPT/config.json, model.safetensors, tokenizer files   # loads with AutoModelForCausalLM / lm-eval
CKPT/midtrain_state/trainer.json    lr (the LR the next step would use), tokens_seen, steps, schedule
CKPT/midtrain_state/optimizer.pt    AdamW state_dict (torch.load(weights_only=True))
CKPT/midtrain_state/rng.pt          RNG states (run-directory `state/` only, for exact resume)
CKPT/midtrain_state/pruned.json     what a study's [keep] policy removed since (study/keep.py)
```

Writes are atomic (`io.atomic_dir` with fsync): a reader finds either the previous complete
checkpoint or the new one, and `io.recover_dir` repairs a swap a killed process left half done.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from pydantic import BaseModel, ConfigDict, ValidationError

from midtrain import env
from midtrain.errors import MidtrainError
from midtrain.io import atomic_dir, atomic_write_json, fault_point

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

STATE_DIR = "midtrain_state"
STATE_FORMAT = "midtrain-state/1"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
MOMENT_FILES = ("optimizer.pt", "rng.pt")  # in STATE_DIR: what only resuming from it needs
PRUNED = "pruned.json"


class RunPosition(BaseModel):
    """Where a run directory's own `state/` stands (for resume)."""

    step: int
    position: int  # sampler position (sequences consumed)
    wall_s: float
    config_hash: str
    world_size: int | None = None  # distributed runs only (docs/scaling.md): resume needs the same
    parallel: str | None = None


class RngState(TypedDict):
    """`midtrain_state/rng.pt` (`optim.rng_state`): the CPU RNG state, and CUDA's if present."""

    torch: torch.Tensor
    cuda: NotRequired[list[torch.Tensor]]


class TrainerState(BaseModel):
    """`midtrain_state/trainer.json`: what a next run continues from."""

    model_config = ConfigDict(extra="allow")

    format: str = STATE_FORMAT
    lr: float
    tokens_seen: int = 0
    steps: int = 0
    # BoundSchedule.to_dict() (a `ScheduleRecord`) of the run that wrote it; read as written, its
    # keys unchecked, so a trainer.json of another release or trainer keeps opening
    schedule: dict[str, str | int | float] | None = None
    run: RunPosition | None = None


# -- reading ---------------------------------------------------------------------------------------


def check_hf_folder(path: str | Path, field: str = "init") -> Path:
    """A folder with config.json and weights, else a one-line error naming `field`."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise MidtrainError(
            f"{field}: {path} is not a HF model folder (no config.json); "
            "pass a folder saved with save_pretrained"
        )
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise MidtrainError(
            f"{field}: {path} has no model.safetensors; save the model with save_pretrained"
        )
    check_weights(path, field)
    return path


def check_weights(path: Path, field: str) -> None:
    """Every safetensors file of the folder has a complete header and covers its tensors."""
    from safetensors import SafetensorError, safe_open

    for f in sorted(path.glob("*.safetensors")):
        try:
            with safe_open(str(f), "pt"):
                pass
        except (SafetensorError, OSError) as e:
            raise MidtrainError(
                f"{field}: {f} is not a complete safetensors file ({e}); restore or re-save it"
            ) from None


def read_trainer_state(path: str | Path) -> TrainerState | None:
    """`CKPT/midtrain_state/trainer.json`, or None when the checkpoint has none."""
    f = Path(path) / STATE_DIR / "trainer.json"
    if not f.is_file():
        return None
    try:
        return TrainerState.model_validate(json.loads(f.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ValidationError) as e:
        reason = " ".join(str(e).split())[:120]
        raise MidtrainError(
            f"{f} is corrupt ({reason}); delete {f.parent} to start fresh"
        ) from None


def removed_by_keep(path: str | Path) -> list[str]:
    """The files (relative to the checkpoint) a keep policy removed from it; [] when none."""
    f = Path(path) / STATE_DIR / PRUNED
    if not f.is_file():
        return []
    try:
        return list(json.loads(f.read_text(encoding="utf-8")).get("removed", []))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return []


def load_model(path: str | Path, device: str = "cpu", field: str = "init") -> PreTrainedModel:
    """Any AutoModelForCausalLM folder in fp32 on `device` (training and evaluation)."""
    import torch
    from transformers import AutoModelForCausalLM

    env.setup()
    env.quiet_transformers()
    check_hf_folder(path, field)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - corrupt weights raise many kinds of error
        reason = " ".join(str(e).split())[:160]
        raise MidtrainError(
            f"{field}: cannot load the model in {path} ({type(e).__name__}: {reason}); "
            "check that its weights are complete"
        ) from None
    return model.to(device)


def meta_model(config: Any) -> PreTrainedModel:
    """The AutoModelForCausalLM of `config` in fp32 on the meta device: shapes, no memory (an
    FSDP2 rank > 0 before rank 0's weights reach its shards; train/distributed.py)."""
    import torch
    from transformers import AutoModelForCausalLM

    env.quiet_transformers()
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def load_optimizer_state(path: str | Path) -> dict[str, Any] | None:  # torch's state_dict
    import torch

    f = Path(path) / STATE_DIR / "optimizer.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def load_rng_state(path: str | Path) -> RngState | None:
    import torch

    f = Path(path) / STATE_DIR / "rng.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


# -- writing ---------------------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: TrainerState,
    optimizer: torch.optim.Optimizer | dict[str, Any] | None = None,  # or torch's state_dict
    rng: RngState | None = None,
    step: int = -1,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a HF folder + `midtrain_state/` atomically. `step` only feeds the test hooks.

    `weights` and a dict `optimizer` are full state dicts gathered from a distributed run's ranks
    (`distributed.full_state`); otherwise the model's and the optimizer's own are written."""
    import torch

    env.quiet_transformers()
    path = Path(path)
    with atomic_dir(path, fsync=True, step=step) as tmp:
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fault_point(f"save:{path.name}", step)  # weights written, optimizer state not yet
        sdir = tmp / STATE_DIR
        sdir.mkdir()
        if optimizer is not None:
            osd = optimizer if isinstance(optimizer, dict) else optimizer.state_dict()
            torch.save(osd, sdir / "optimizer.pt")
        if rng is not None:
            torch.save(rng, sdir / "rng.pt")
        atomic_write_json(sdir / "trainer.json", state.model_dump(mode="json", exclude_none=True))
    return path


def write_removed(path: str | Path, name: str, policy: str) -> None:
    """Add `name` (a file of the checkpoint, relative) to its midtrain_state/pruned.json."""
    removed = sorted({*removed_by_keep(path), name})
    (Path(path) / STATE_DIR).mkdir(exist_ok=True)
    atomic_write_json(Path(path) / STATE_DIR / PRUNED, {"removed": removed, "policy": policy})
