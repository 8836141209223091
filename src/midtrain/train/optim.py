"""The optimizer, the language-model loss and RNG state: the pieces the loop builds from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from midtrain.errors import MidtrainError
from midtrain.train import checkpoint as ckpt
from midtrain.train.config import OptimizerConfig

if TYPE_CHECKING:
    import torch


def make_optimizer(params: list[Any], o: OptimizerConfig) -> Any:
    """AdamW, weight decay on matrices only (biases and norms excluded), fused when possible."""
    import torch

    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": o.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs = {"lr": 0.0, "betas": tuple(o.betas), "eps": o.eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, TypeError):  # no fused kernel for this device/dtype
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def load_optimizer(opt: Any, path: Path) -> bool:
    """Load `path`'s saved AdamW state into `opt` (shapes checked); False when there is none."""
    state = ckpt.load_optimizer_state(path)
    if state is None:
        return False
    shapes = [tuple(p.shape) for g in opt.param_groups for p in g["params"]]
    saved = state.get("state", {})
    for i, shape in enumerate(shapes):
        moment = saved.get(i, {}).get("exp_avg")
        if moment is not None and tuple(moment.shape) != shape:
            raise MidtrainError(
                f"{path}/midtrain_state/optimizer.pt does not match the model (parameter {i}: "
                f"{tuple(moment.shape)} vs {shape}); set optimizer.load_state = false"
            )
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError) as e:
        raise MidtrainError(
            f"{path}/midtrain_state/optimizer.pt: {e}; set optimizer.load_state = false"
        ) from None
    return True


def set_hparams(opt: Any, o: OptimizerConfig) -> None:
    """A warm start keeps the checkpoint's moments but takes this run's hyperparameters."""
    for group, wd in zip(opt.param_groups, (o.weight_decay, 0.0), strict=True):
        group.update(weight_decay=wd, betas=tuple(o.betas), eps=o.eps)


def rng_state() -> ckpt.RngState:
    import torch

    states: ckpt.RngState = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_state(states: ckpt.RngState | None) -> None:
    import torch

    if states is None:
        return
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def lm_loss(model: Any, ids: torch.Tensor) -> torch.Tensor:
    """Summed next-token cross-entropy of a batch of sequences (fp32 logits).

    The targets are the ids shifted left with the last position ignored (-100), so the logits are
    used whole: slicing off their last position would copy them, and their gradient, once more
    (~3% of an eager CPU step on the demo model; docs/benchmarks.md).
    """
    import torch.nn.functional as F

    logits = model(input_ids=ids, use_cache=False).logits
    targets = F.pad(ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="sum")
