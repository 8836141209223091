"""`starts_mode = "to_end"`: each start of a timing grid trains to the end of the full run.

Liu, Neubig and Xiong (2025) start midtraining at step k and run it to the end of the fixed total
budget on the original schedule (their configs: max_additional_steps = total - k, cosine to
min_lr), so an earlier start means a longer specialised phase on the same final budget. The
default `cooldown` mode gives every start the same short cooldown instead: an earlier start is
then simply a less-trained model.

Here every run of a start (its control and each arm) trains `full_run_tokens` minus the tokens
its checkpoint has seen, in whole optimizer steps, on the checkpoint's schedule continued:

- shape and final (minimum) LR from the run that wrote the checkpoint, when its `midtrain_state`
  records a decaying schedule it had not finished; else from the study's [schedule] (a stable-
  phase checkpoint records `constant`: the decay it was heading for is the study's to say);
- the shape is bound afresh from the checkpoint's LR over the remaining steps: a linear decay
  continues exactly, a cosine becomes a cosine from the current LR to the minimum;
- the start LR the checkpoint records (the run planner's default), unless the study sets
  schedule.start_lr; no warmup when a recorded schedule continues.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from midtrain.errors import MidtrainError
from midtrain.study.config import StudyConfig
from midtrain.train.checkpoint import TrainerState, read_trainer_state
from midtrain.train.config import ScheduleConfig


@dataclass(frozen=True)
class Budget:
    """What a start's runs train in to_end mode."""

    tokens: int
    schedule: ScheduleConfig
    schedule_from: Literal["checkpoint", "study"]


def tokens_seen(cfg: StudyConfig, ckpt: str, state: TrainerState | None) -> int | None:
    """The tokens a start has seen: `checkpoint_tokens` for the study's checkpoint when set,
    else its `midtrain_state`."""
    if ckpt == cfg.checkpoint and cfg.checkpoint_tokens is not None:
        return cfg.checkpoint_tokens
    return state.tokens_seen if state is not None else None


def continued_schedule(
    cfg: StudyConfig, state: TrainerState | None
) -> tuple[ScheduleConfig, Literal["checkpoint", "study"]]:
    """The checkpoint's own decaying schedule when it recorded one it had not finished, else
    the study's (module docstring)."""
    rec = state.schedule if state is not None else None
    if rec and rec.get("name", "constant") != "constant" and "final_lr" in rec:
        if state.lr > float(rec["final_lr"]):
            return ScheduleConfig(name=str(rec["name"]), start_lr=cfg.schedule.start_lr,
                                  final_lr=float(rec["final_lr"])), "checkpoint"  # fmt: skip
    return cfg.schedule.model_copy(), "study"


def start_budget(cfg: StudyConfig, ckpt: str, where: str) -> Budget:
    """`full_run_tokens` minus the start's tokens seen (whole steps) and its continued schedule;
    `where` names the start in errors ("checkpoint", "starts[0]")."""
    state = read_trainer_state(ckpt)
    seen = tokens_seen(cfg, ckpt, state)
    if seen is None:
        fix = (
            "set checkpoint_tokens" if where == "checkpoint" else "give a checkpoint midtrain wrote"
        )
        raise MidtrainError(
            f"{where}: {ckpt} has no midtrain_state/trainer.json, so the tokens it has seen are "
            f'unknown and starts_mode = "to_end" cannot tell how far it is from the end; {fix}'
        )
    full = int(cfg.full_run_tokens or 0)
    batch = int(cfg.train.get("batch_tokens", cfg.batch_tokens))  # [train] may set it
    if full - seen < batch:
        at = "past" if seen > full else "at" if seen == full else "less than one step from"
        raise MidtrainError(
            f"{where}: {ckpt} has seen {seen:,} tokens, {at} full_run_tokens {full:,}, so it has "
            f"no run left to the end; drop it from the starts or raise full_run_tokens to "
            f">= {seen + batch:,}"
        )
    schedule, source = continued_schedule(cfg, state)
    return Budget((full - seen) // batch * batch, schedule, source)
