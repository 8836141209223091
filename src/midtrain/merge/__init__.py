"""Checkpoint averaging (`midtrain merge`): a uniform or weighted mean of HF checkpoints of one
model, streamed tensor by tensor into a new HF folder with a `merge.json` record. docs/merging.md.
"""

from midtrain.merge.average import (
    FORMAT,
    MergeOutcome,
    MergeRecord,
    merge_checkpoints,
    run_merge,
)
from midtrain.merge.inputs import parse_weights

__all__ = [
    "FORMAT",
    "MergeOutcome",
    "MergeRecord",
    "merge_checkpoints",
    "parse_weights",
    "run_merge",
]
