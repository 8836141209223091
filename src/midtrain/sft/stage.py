"""The `sft` stage: an SFT config (checkpoint included) in, an SFT directory and `SftResult` out.

A study can chain it after a train stage (an SFT probe of each run's final checkpoint).
"""

from __future__ import annotations

from pathlib import Path

from midtrain.jobs import Stage, register
from midtrain.sft.config import SftConfig
from midtrain.sft.grid import finished, run_sft
from midtrain.sft.results import SftResult


@register
class SftStage(Stage):
    name = "sft"
    Spec = SftConfig
    Result = SftResult

    def run(self, spec: SftConfig, out: Path) -> SftResult:
        return run_sft(spec, out, progress=False)

    def cached(self, spec: SftConfig, out: Path) -> SftResult | None:
        return finished(out)
