"""Process set-up shared by every entry point: offline Hugging Face, quiet libraries, threads, device.

midtrain never downloads weights or datasets: every entry point (the CLI, `train.run`,
`eval.evaluate`, a worker process of an executor) calls `setup()` before transformers, datasets or
lm-eval are imported, so `HF_HUB_OFFLINE=1` and `HF_DATASETS_OFFLINE=1` hold everywhere.
"""

from __future__ import annotations

import os
import signal
import sys

from midtrain.errors import MidtrainError

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
DEFAULTS = {"TOKENIZERS_PARALLELISM": "false", "RAY_AUTH_MODE": "disabled"}
DEVICES = ("auto", "cpu", "cuda")


def setup(threads: int = 0) -> None:
    """Offline Hugging Face (forced), quiet tokenizers, and `threads` torch threads when > 0."""
    os.environ.update(OFFLINE)
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def quiet_transformers() -> None:
    """No download/shard progress bars or config chatter from transformers inside a run."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def resolve_device(requested: str, field: str = "device") -> str:
    """'auto' -> 'cuda' when torch sees a GPU, else 'cpu'; a one-line error for the impossible."""
    import torch

    if requested not in DEVICES:
        raise MidtrainError(f"{field}: {requested!r} is not a device; use one of {DEVICES}")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise MidtrainError(f"{field}: 'cuda' but torch sees no GPU; use 'cpu' or 'auto'")
    return requested


LAUNCHER_ENV = (
    "MIDTRAIN_LAUNCHER_PID"  # a rank started by train/launch.py run_ranks: its launcher's pid
)


def die_with_launcher() -> None:
    """In a rank that `run_ranks` started (the CLI calls this first): SIGKILL when the launcher
    dies (Linux PR_SET_PDEATHSIG, set in the rank itself: no preexec_fn in a threaded launcher),
    and exit at once when it is already gone."""
    pid = os.environ.get(LAUNCHER_ENV)
    if not pid or not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(pid):
        os._exit(1)
