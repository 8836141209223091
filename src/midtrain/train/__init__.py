"""Training runs: config, plan, the loop, checkpoints and the run directory.

from midtrain.train import load_run_config, run
result = run(load_run_config("anneal.toml"), "runs/anneal")   # a RunResult
"""

from midtrain.train.config import (
    OptimizerConfig,
    RunConfig,
    ScheduleConfig,
    load_run_config,
    pretrain_config,
)
from midtrain.train.log import Diverged
from midtrain.train.loop import run
from midtrain.train.plan import RunPlan, estimate, plan_run
from midtrain.train.rundir import RunResult

__all__ = [
    "Diverged",
    "OptimizerConfig",
    "RunConfig",
    "RunPlan",
    "RunResult",
    "ScheduleConfig",
    "estimate",
    "load_run_config",
    "plan_run",
    "pretrain_config",
    "run",
]
