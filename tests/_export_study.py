"""A small planned study for the export tests and scripts/make_export_fixtures.py.

Three stores of generated ids (no tokenizer, no model: nothing trains); runs: the control and
math at 0.3 and 0.5, seeds 0 and 1 (6 runs). Paths in exports are shown under ROOT.
"""

from __future__ import annotations

from pathlib import Path

from _data_fixtures import synthetic_store

ROOT = "/ROOT"
SEQ_LEN = 64
STUDY = """
name = "export"
checkpoint = "ckpt"
tokens = 65536
seq_len = 64
batch_tokens = 1024
micro_batch = 4
seeds = [0, 1]

[schedule]
name = "{shape}"
start_lr = 3e-4
final_lr_fraction = 0.1
warmup_steps = {warmup}

[stores]
web = "stores/web"
code = "stores/code"
math = "stores/math"

[base]
web = 0.8
code = 0.2

[[candidates]]
name = "math"
mix = {{ math = 1.0 }}
fractions = [0.3, 0.5]
max_repetition = 2.0

[eval]
tasks = ["world_facts"]
"""


def build_study(root: Path, shape: str = "cosine", warmup: int = 4) -> Path:
    """The stores (once) and ROOT/study.toml; returns the study file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ckpt").mkdir(exist_ok=True)
    (root / "ckpt" / "config.json").write_text("{}")
    for i, name in enumerate(("web", "code", "math")):
        if not (root / "stores" / name).exists():
            synthetic_store(root / "stores", name, i, 1000, SEQ_LEN)  # 64,032 tokens each
    study = root / "study.toml"
    study.write_text(STUDY.format(shape=shape, warmup=warmup))
    return study


def rooted(text: str, root: Path) -> str:
    return text.replace(str(root.resolve()), ROOT)


# schedule shapes x warmup steps whose Megatron LR curves are checked (tests/test_export.py)
SHAPES = (
    ("linear", 0), ("cosine", 0), ("1-sqrt", 0), ("cosine", 4), ("linear", 8), ("exp", 0),
    ("constant", 0), ("constant", 4),
)  # fmt: skip
