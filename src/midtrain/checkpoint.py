"""Checkpoints: HF causal-LM folders, plus our training state when we wrote them.

```
CKPT/config.json, model.safetensors, tokenizer files   # loads with AutoModelForCausalLM / lm-eval
CKPT/midtrain_state/trainer.json    lr (the LR the next step would use), tokens_seen, steps, schedule
CKPT/midtrain_state/optimizer.pt    AdamW state_dict (torch.load(weights_only=True))
CKPT/midtrain_state/rng.pt          RNG states (run-directory `state/` only, for exact resume)
```

Writes are atomic: the folder is built as `.NAME.tmp` and swapped in through `.NAME.old`;
`recover_dir` finishes or undoes a swap that a killed process left half done, so a reader finds
either the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from midtrain.errors import MidtrainError
from midtrain.io import atomic_write_json

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

STATE_DIR = "midtrain_state"
STATE_FORMAT = "midtrain-state/1"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
KILL_ENV = "MIDTRAIN_TEST_KILL"  # "point:step": SIGKILL this process there (resume tests)


def fault_point(point: str, step: int) -> None:
    """Test hook: die by SIGKILL at `point` of `step` when MIDTRAIN_TEST_KILL names it."""
    if os.environ.get(KILL_ENV) == f"{point}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def quiet_transformers() -> None:
    """No download/shard progress bars or config chatter from transformers inside a run."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


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
    return path


def read_trainer_state(path: str | Path) -> dict[str, Any] | None:
    """`CKPT/midtrain_state/trainer.json` as a dict, or None when the checkpoint has none."""
    f = Path(path) / STATE_DIR / "trainer.json"
    if not f.is_file():
        return None
    try:
        state = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MidtrainError(f"{f} is corrupt ({e}); delete {f.parent} to start fresh") from None
    if not isinstance(state, dict) or not isinstance(state.get("lr"), int | float):
        raise MidtrainError(f"{f} is corrupt (no numeric 'lr'); delete {f.parent} to start fresh")
    return state


def load_model(path: str | Path, device: str = "cpu") -> PreTrainedModel:
    """Any AutoModelForCausalLM folder, fp32 master weights, on `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    quiet_transformers()
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise MidtrainError(f"cannot load the model in {path}: {e}") from None
    return model.to(device)


def load_optimizer_state(path: str | Path) -> dict[str, Any] | None:
    import torch

    f = Path(path) / STATE_DIR / "optimizer.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def load_rng_state(path: str | Path) -> dict[str, Any] | None:
    import torch

    f = Path(path) / STATE_DIR / "rng.pt"
    return torch.load(f, map_location="cpu", weights_only=True) if f.is_file() else None


def load_checkpoint(
    path: str | Path, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any] | None]:
    """(model, tokenizer, trainer state or None) of a HF folder."""
    from midtrain.data.tokenizer import load_tokenizer

    check_hf_folder(path)
    return load_model(path, device), load_tokenizer(path), read_trainer_state(path)


# -- writing ---------------------------------------------------------------------------------------


def _siblings(final: Path) -> tuple[Path, Path]:
    return final.with_name(f".{final.name}.tmp"), final.with_name(f".{final.name}.old")


def recover_dir(final: str | Path) -> None:
    """Undo what a killed `atomic_checkpoint_dir` left: keep the last complete folder."""
    final = Path(final)
    tmp, old = _siblings(final)
    if not final.exists() and old.exists():
        os.replace(old, final)  # killed between the two renames: the old one is complete
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_checkpoint_dir(final: str | Path, step: int = -1) -> Iterator[Path]:
    """Build `final` as `.final.tmp`, then swap it in; `recover_dir` repairs a killed swap."""
    final = Path(final)
    recover_dir(final)
    tmp, old = _siblings(final)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        _fsync_tree(tmp)
        if final.exists():
            os.replace(final, old)
            fault_point(f"swap:{final.name}", step)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_tree(root: Path) -> None:
    """Flush every file to disk and give it the umask's mode (some writers make 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    for p in root.rglob("*"):
        if p.is_file():
            p.chmod(0o666 & ~mask)
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def save_checkpoint(
    path: str | Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    state: dict[str, Any],
    optimizer: torch.optim.Optimizer | None = None,
    rng: dict[str, Any] | None = None,
    step: int = -1,
) -> Path:
    """Write a HF folder + `midtrain_state/` atomically. `step` only feeds the test hook."""
    import torch

    quiet_transformers()
    path = Path(path)
    with atomic_checkpoint_dir(path, step) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        fault_point(f"save:{path.name}", step)  # weights written, optimizer state not yet
        sdir = tmp / STATE_DIR
        sdir.mkdir()
        if optimizer is not None:
            torch.save(optimizer.state_dict(), sdir / "optimizer.pt")
        if rng is not None:
            torch.save(rng, sdir / "rng.pt")
        atomic_write_json(sdir / "trainer.json", {"format": STATE_FORMAT, **state})
    return path
