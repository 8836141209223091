"""SFT sets of the demo world: prompt/response rows for `midtrain sft` and a study's `[sft_probe]`.

Three sets, drawn from the same world and skills as the sources, and like them never holding a
held-out task item:

- `facts`: a question about an entity in one of its *training* phrasings -> the short answer
  (the phrasing each fact reserves for `world_facts` is never used);
- `arith`: "What is a op b?" for problems that are not held out, or a word problem -> the number;
- `code`: "What does this program print?" with a program that is not a task program -> its output.

Each set is `train` + `val` rows with no prompt in both (and none twice). Rows are plain
`{"prompt", "response"}` (the default SFT template renders `Question: {prompt}\\nAnswer: {response}`).
The rows depend on the seed and on the row counts only.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from midtrain.demo.world_skills import fmt, value
from midtrain.demo.world_text import NAMES, THINGS, Ctx

TRAIN_ROWS_AT_SCALE_1 = 256
VAL_ROWS_AT_SCALE_1 = 64
MIN_TRAIN_ROWS = 48
MIN_VAL_ROWS = 16


def _facts(rng: random.Random, ctx: Ctx) -> tuple[str, str]:
    f = ctx.fact(rng)
    return f.train_question(rng), f.value


def _arith(rng: random.Random, ctx: Ctx) -> tuple[str, str]:
    t = ctx.skills.askable(rng)  # never a held-out problem
    if rng.random() < 0.5 or t[1] == "*":
        return f"What is {fmt(t)}?", str(value(t))
    a, op, b = t
    who, thing = rng.choice(NAMES), rng.choice(THINGS)
    city = rng.choice(ctx.world.cities)
    if op == "+":
        return (
            f"{who} from {city} has {a} {thing} and gets {b} more. How many {thing} does {who} have now?",
            str(value(t)),
        )
    return f"{who} from {city} had {a} {thing} and sold {b}. How many {thing} are left?", str(
        value(t)
    )


def _code(rng: random.Random, ctx: Ctx) -> tuple[str, str]:
    p = ctx.skills.program(rng)  # never a task program
    return f"What does this Python program print?\n{p.src}", p.output


SFT_SETS: dict[str, Callable[[random.Random, Ctx], tuple[str, str]]] = {
    "facts": _facts,
    "arith": _arith,
    "code": _code,
}


def sft_rows(scale: float) -> tuple[int, int]:
    """(train, val) rows per set at `scale`."""
    return (
        max(MIN_TRAIN_ROWS, round(TRAIN_ROWS_AT_SCALE_1 * scale)),
        max(MIN_VAL_ROWS, round(VAL_ROWS_AT_SCALE_1 * scale)),
    )


def sft_set(name: str, ctx: Ctx, seed: int, n_train: int, n_val: int) -> dict[str, list[dict]]:
    """`{"train": rows, "val": rows}` for set `name`: distinct prompts, none in both splits."""
    rng = random.Random(f"midtrain-world:{seed}:sft:{name}")
    make = SFT_SETS[name]
    rows: list[dict] = []
    seen: set[str] = set()
    tries = 0
    while len(rows) < n_train + n_val:
        tries += 1
        if tries > 100 * (n_train + n_val):
            raise RuntimeError(f"sft set {name}: cannot draw {n_train + n_val} distinct prompts")
        prompt, response = make(rng, ctx)
        if prompt not in seen:
            seen.add(prompt)
            rows.append({"prompt": prompt, "response": response})
    return {"train": rows[:n_train], "val": rows[n_train:]}
