"""Evaluation: per-domain bits-per-byte and lm-eval tasks, kept per example.

from midtrain.eval import evaluate
result = evaluate("runs/a/final", tasks=["hellaswag"], domains={"web": "data/web"}, out="ev")
"""

from midtrain.eval.api import EvalSettings, TaskSetting, evaluate
from midtrain.eval.results import DomainExample, EvalResult, Examples, TaskExample

__all__ = [
    "DomainExample",
    "EvalResult",
    "EvalSettings",
    "Examples",
    "TaskExample",
    "TaskSetting",
    "evaluate",
]
