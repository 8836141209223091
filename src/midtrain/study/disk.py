"""The disk a study needs, from the model's size and the [keep] policy (printed by `--dry-run`).

Every checkpoint a study writes is the start checkpoint's model in fp32 (runs train fp32 master
weights and save them as they are, whatever dtype the start checkpoint was stored in): weights of
4 bytes a parameter, AdamW moments (`exp_avg`, `exp_avg_sq`) of 8, plus the small files of the
folder (config, tokenizer; taken from the start checkpoint). The parameter count comes from the
checkpoint's safetensors headers (no tensor is read), else from its config on the meta device.
Logs, evaluation records and results are not counted: they are small next to a checkpoint.

While it trains, a run holds `state/` and, at its end, `final/` too (two full checkpoints); an
SFT probe holds one checkpoint per LR of its grid plus the running LR's `state/`; a merge holds
its averaged weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from midtrain.errors import MidtrainError
from midtrain.study.keep import SFT_LEVEL, KeepSpec, Level
from midtrain.study.merging import merge_arms

FP32, MOMENTS = 4, 8  # bytes a parameter: fp32 weights; AdamW's two fp32 moments
# bytes a tensor beyond its data (measured): its safetensors header entry; its two moments' and
# step's records in torch.save's zip (what makes a tiny model's checkpoint ~4% larger)
HEADER, RECORDS = 100, 850


@dataclass(frozen=True)
class ModelSize:
    params: int
    tensors: int
    dtype: str  # the start checkpoint's own storage dtype (most of its parameters)
    other: int  # bytes of a checkpoint folder's small files (config, tokenizer)

    @property
    def weights(self) -> int:
        return self.params * FP32 + self.tensors * HEADER

    @property
    def moments(self) -> int:
        return self.params * MOMENTS + self.tensors * RECORDS

    def checkpoint(self, level: Level) -> int:
        """A written checkpoint folder once `level` is applied."""
        return self.other + {"full": self.weights + self.moments, "weights": self.weights,
                             "none": 0}[level]  # fmt: skip


@dataclass(frozen=True)
class DiskRow:
    what: str
    count: int
    peak: int  # one of them, while it runs
    kept: int  # one of them, once pruned under the policy

    @property
    def total(self) -> int:
        return self.count * self.kept


def model_size(path: str | Path) -> ModelSize:
    """Parameters and dtype from the safetensors headers (else the config), small-file bytes."""
    from midtrain.merge.inputs import read_checkpoint

    path = Path(path)
    try:
        tensors = list(read_checkpoint(path).tensors.values())
        counts: Counter[str] = Counter()
        for t in tensors:
            counts[t.dtype] += math.prod(t.shape)
        params, n, dtype = sum(counts.values()), len(tensors), counts.most_common(1)[0][0]
    except (MidtrainError, IndexError):  # no safetensors (a pytorch_model.bin): count the config
        (params, n), dtype = _config_params(path), "?"
    weights = {p.name for p in path.glob("*.safetensors")} | {p.name for p in path.glob("*.bin")}
    small = [p for p in path.iterdir() if p.is_file() and p.name not in weights
             and not p.name.endswith(".index.json")]  # fmt: skip
    return ModelSize(params, n, dtype, sum(p.stat().st_size for p in small))


def _config_params(path: Path) -> tuple[int, int]:
    """(parameters, tensors) of the model its config describes, built on the meta device."""
    from transformers import AutoConfig

    from midtrain.train.checkpoint import meta_model

    state = meta_model(AutoConfig.from_pretrained(str(path))).state_dict()
    return sum(t.numel() for t in state.values()), len(state)


def disk_rows(plan: Any, size: ModelSize) -> list[DiskRow]:
    """One row per kind of checkpoint the study writes: runs, SFT probes, merges."""
    cfg, keep = plan.config, plan.config.keep
    full = size.checkpoint("full")
    points = len(cfg.eval.point_fractions) - 1  # eval points' weights, deleted once evaluated
    peak = 2 * full + points * size.checkpoint("weights")
    rows = [DiskRow("run", len(plan.runs), peak, size.checkpoint(keep.run))]
    probes = sum(len(r.probes) for r in plan.runs) + len(plan.start_probes)
    if probes:
        lrs = len(cfg.sft_probe.lrs)
        kept = size.checkpoint(SFT_LEVEL[keep.sft]) + (lrs - 1) * size.checkpoint(
            "full" if keep.sft == "all" else "none"
        )
        rows.append(DiskRow("SFT probe", probes, (lrs + 1) * full, kept))
    if cfg.merge_seeds:
        merges = len(merge_arms(cfg, plan.arms()))
        kept = size.checkpoint("weights" if keep.merge else "none")
        rows.append(DiskRow("merge", merges, size.checkpoint("weights"), kept))
    return rows


def as_written(plan: Any) -> Any:
    """The plan's config with nothing pruned (run full, every SFT checkpoint, merges kept)."""
    keep = KeepSpec(run="full", sft="all", merge=True)
    return dataclasses.replace(plan, config=plan.config.model_copy(update={"keep": keep}))


def disk_table(plan: Any):  # noqa: ANN201 - a rich Table and the lines under it
    """The dry run's disk table, and a line with the totals (kept, peak, as written)."""
    from rich.table import Table

    from midtrain.console import safe
    from midtrain.study.keep import fmt_bytes

    size = model_size(plan.config.checkpoint)
    rows, written = disk_rows(plan, size), disk_rows(as_written(plan), size)
    t = Table(title=f"disk: {size.params:,} parameters ({safe(size.dtype)} in the checkpoint; "
                    f"fp32 in every checkpoint the study writes: weights {fmt_bytes(size.weights)}, "
                    f"AdamW moments {fmt_bytes(size.moments)}); {safe(plan.config.keep.describe())}")  # fmt: skip
    for col in ("checkpoints of", "count", "each while it runs", "each kept", "kept in all"):
        t.add_column(col)
    for r in rows:
        t.add_row(r.what, str(r.count), fmt_bytes(r.peak), fmt_bytes(r.kept), fmt_bytes(r.total))
    kept = sum(r.total for r in rows)
    extra = max(r.peak - r.kept for r in rows)
    line = (
        f"disk total: {fmt_bytes(kept)} kept after the study, up to {fmt_bytes(kept + extra)} "
        f"while it runs (one job at a time; each further worker adds up to {fmt_bytes(extra)}); "
        f"{fmt_bytes(sum(r.total for r in written))} with nothing pruned; logs and evaluation "
        "records not counted"
    )
    return t, line
