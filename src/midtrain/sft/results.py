"""Typed results of an SFT probe (one JSON round-trip each, with a format version).

```
OUT/config.json          the resolved SftConfig (+ derived steps, data counts)
OUT/inputs.json          content hashes of the checkpoint, tokenizer and data files; versions
OUT/sft.json             SftResult: the grid, its validation losses, the chosen LR
OUT/val_examples_before.jsonl   the checkpoint's own validation loss, one line per example
OUT/status.json          running | failed | interrupted | done
OUT/lr-<LR>/             one fine-tune: config.json, log.jsonl, state/ (while running), final/,
                         metrics.json (SftRunResult), val_examples.jsonl (one line per example)
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from midtrain.io import read_json

RESULT_FORMAT = "midtrain-sft/1"
RUN_FORMAT = "midtrain-sft-run/1"


class ValSummary(BaseModel):
    """Validation loss on response tokens (in-domain SFT loss), from per-example records."""

    examples: int
    loss: float  # mean over examples of each example's mean NLL per response token (nats)
    token_loss: float  # all response tokens' NLL / their count (nats per token)
    bits_per_byte: float  # all response NLL in bits / response UTF-8 bytes
    tokens: int


class SftRunResult(BaseModel):
    """OUT/lr-<LR>/metrics.json: one fine-tune at one peak LR."""

    format: str = RUN_FORMAT
    lr: float
    steps: int
    tokens: int  # real (non-pad) tokens trained on, prompts included
    first_loss: float
    final_loss: float
    wall_s: float
    tokens_per_s: float | None
    val: ValSummary
    final_checkpoint: str


class GridPoint(BaseModel):
    """One LR of the grid: its validation loss, or why it has none."""

    lr: float
    status: Literal["done", "diverged"]
    val_loss: float | None = None
    dir: str
    reason: str | None = None


class DataSummary(BaseModel):
    train_rows: int
    val_rows: int
    train_examples: int
    val_examples: int
    truncated: int  # prompts cut from the left to fit seq_len (train + val)
    dropped: int  # examples that did not fit (train + val)
    train_tokens: int  # per epoch, real tokens
    response_tokens: int  # per epoch, trained tokens
    pad_fraction: float  # share of padding in the first epoch's micro batches


class SftResult(BaseModel):
    """OUT/sft.json: what an SFT probe reports (the `sft` stage's result)."""

    format: str = RESULT_FORMAT
    status: Literal["done"] = "done"
    checkpoint: str
    chosen_lr: float
    val_loss: float  # the chosen run's `val.loss`
    val: ValSummary
    val_before: ValSummary  # the checkpoint itself, before fine-tuning
    grid: list[GridPoint]
    final_checkpoint: str
    steps: int
    epochs: int
    data: DataSummary
    format_check: dict[str, int]  # special token -> times seen in the rendered SFT data
    warnings: list[str] = []

    @classmethod
    def load(cls, out: Path) -> SftResult:
        return cls.model_validate(read_json(out / "sft.json"))
