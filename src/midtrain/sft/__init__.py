"""SFT probes: full fine-tuning on plain-text prompt/response rows, LR chosen by validation loss.

from midtrain.sft import run_sft
result = run_sft({"checkpoint": "ckpt", "data": "train.jsonl"}, "runs/sft")   # an SftResult
"""

from midtrain.sft.config import SftConfig, SftTemplate, load_sft_config
from midtrain.sft.grid import run_sft
from midtrain.sft.plan import SftPlan, plan_sft
from midtrain.sft.results import SftResult, SftRunResult, ValSummary

__all__ = [
    "SftConfig",
    "SftPlan",
    "SftResult",
    "SftRunResult",
    "SftTemplate",
    "ValSummary",
    "load_sft_config",
    "plan_sft",
    "run_sft",
]
