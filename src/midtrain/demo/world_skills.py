"""Arithmetic problems and small Python programs of the demo world, with their held-out sets.

Arithmetic is held out like a fact: every problem of the world's small range (sums and
differences of 0-20, times tables) occurs in training as equations, worked steps and word
problems, but a held-out problem is never asked with the task's phrasing ("What is a op b?").
Programs are held out entirely: no task program text is ever rendered into a source, so the
code task needs the model to read the program, not to recall it.
"""

from __future__ import annotations

import contextlib
import io
import random
from collections.abc import Callable
from dataclasses import dataclass

from midtrain.demo.world_entities import World

Triple = tuple[int, str, int]
OPS: dict[str, Callable[[int, int], int]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
}
N_HELDOUT = 400  # items reserved per skill task, whatever the scale


def sample_triple(rng: random.Random) -> Triple:
    """A small arithmetic problem: sums and differences of 0-20, the 2-9 times tables to 12."""
    op = rng.choice("++--*")
    if op == "*":
        return rng.randint(2, 9), op, rng.randint(2, 12)
    a = rng.randint(0, 20)
    b = rng.randint(0, a if op == "-" else 20)
    return a, op, b


def value(t: Triple) -> int:
    return OPS[t[1]](t[0], t[2])


def fmt(t: Triple) -> str:
    return f"{t[0]} {t[1]} {t[2]}"


def number_distractors(rng: random.Random, answer: int, offsets=(1, -1, 10, -10)) -> list[str]:
    """Three wrong numbers near `answer` (off by one or by ten), never negative."""
    cands = [answer + d for d in offsets if answer + d >= 0]
    rng.shuffle(cands)
    extra = (answer + 2, answer + 11, answer + 20, answer + 3)
    out = [c for c in cands + list(extra) if c != answer]
    return [str(x) for x in dict.fromkeys(out)][:3]


def run_program(src: str) -> str:
    """The program's printed output (one line). Programs are generated here, never user input."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(src, "<world>", "exec"), {"__builtins__": __builtins__})  # noqa: S102
    return buf.getvalue().strip()


# --- program families: each returns (program text, list of plausible wrong outputs) ---------


def _chain(rng: random.Random, w: World) -> tuple[str, list[str]]:
    x, y, z = rng.randint(1, 12), rng.randint(1, 9), rng.randint(1, 9)
    op1, op2 = rng.choice("+-*"), rng.choice("+*")
    src = f"a = {x}\nb = a {op1} {y}\nprint(b {op2} {z})"
    b = OPS[op1](x, y)
    return src, [str(b), str(OPS[op2](b, z) + 1), str(OPS[op2](x, z))]


def _loop_sum(rng: random.Random, w: World) -> tuple[str, list[str]]:
    n, k = rng.randint(2, 9), rng.randint(1, 4)
    body = rng.choice(["i", f"i * {k}", f"{k}", f"i + {k}"])
    src = f"total = 0\nfor i in range({n}):\n    total += {body}\nprint(total)"
    alt = [src.replace(f"range({n})", f"range({m})") for m in (n + 1, n - 1)]
    return src, [run_program(s) for s in alt] + [str(n)]


def _slice(rng: random.Random, w: World) -> tuple[str, list[str]]:
    word = rng.choice(w.countries + w.cities)
    k = rng.randint(2, min(5, len(word) - 1))
    src = f'word = "{word}"\nprint(word[:{k}])'
    return src, [word[: k + 1], word[: k - 1], word[k:]]


def _repeat(rng: random.Random, w: World) -> tuple[str, list[str]]:
    word = rng.choice(["ab", "na", "lo", "ti", "ka", "ro", "xy", "mo", "ze"])
    k = rng.randint(2, 4)
    src = f'word = "{word}"\nprint(word * {k})'
    return src, [word * (k + 1), word * (k - 1), word[::-1] * k]


def _length(rng: random.Random, w: World) -> tuple[str, list[str]]:
    word = rng.choice(w.countries + w.cities + w.elements)
    src = f'print(len("{word}"))'
    n = len(word)
    return src, [str(n + 1), str(n - 1), str(n + 2)]


def _concat(rng: random.Random, w: World) -> tuple[str, list[str]]:
    a, b = rng.sample(w.cities, 2)
    src = f'a = "{a}"\nb = "{b}"\nprint(b + a)'
    return src, [a + b, a, b]


def _list_fn(rng: random.Random, w: World) -> tuple[str, list[str]]:
    xs = rng.sample(range(1, 20), rng.randint(3, 5))
    fn = rng.choice(["max", "min", "sum", "len"])
    src = f"xs = {xs}\nprint({fn}(xs))"
    others = {"max": max(xs), "min": min(xs), "sum": sum(xs), "len": len(xs)}
    return src, [str(v) for k, v in others.items() if k != fn] + [str(xs[0])]


def _index(rng: random.Random, w: World) -> tuple[str, list[str]]:
    xs = rng.sample(w.pools[rng.choice(["exports", "colors", "professions"])], 4)
    i = rng.randint(0, 3)
    src = f"items = {xs}\nprint(items[{i}])"
    return src, [x for j, x in enumerate(xs) if j != i]


def _if_else(rng: random.Random, w: World) -> tuple[str, list[str]]:
    x, t = rng.randint(0, 20), rng.randint(0, 20)
    yes, no, *other = rng.sample(["big", "small", "yes", "no", "high", "low", "hot", "cold"], 4)
    src = f'x = {x}\nif x > {t}:\n    print("{yes}")\nelse:\n    print("{no}")'
    return src, [yes, no, *other]


def _function(rng: random.Random, w: World) -> tuple[str, list[str]]:
    a, b, x = rng.randint(2, 5), rng.randint(1, 9), rng.randint(1, 9)
    src = f"def f(n):\n    return n * {a} + {b}\nprint(f({x}))"
    return src, [str((x + 1) * a + b), str(x * a), str(x * (a + b))]


def _lookup(rng: random.Random, w: World) -> tuple[str, list[str]]:
    attr = rng.choice(["capital", "language", "export"])
    keys = rng.sample(w.countries, 3)
    table = ", ".join(f'"{k}": "{w.get(k, attr)}"' for k in keys)
    key = rng.choice(keys)
    src = f'{attr} = {{{table}}}\nprint({attr}["{key}"])'
    return src, [w.get(k, attr) for k in keys if k != key] + [key]


def _halving(rng: random.Random, w: World) -> tuple[str, list[str]]:
    n = rng.randint(3, 64)
    src = f"n = {n}\nsteps = 0\nwhile n > 1:\n    n = n // 2\n    steps += 1\nprint(steps)"
    s = run_program(src)
    return src, [str(int(s) + 1), str(max(int(s) - 1, 0)), str(n // 2)]


PROGRAMS: dict[str, Callable[[random.Random, World], tuple[str, list[str]]]] = {
    "chain": _chain,
    "loop_sum": _loop_sum,
    "slice": _slice,
    "repeat": _repeat,
    "length": _length,
    "concat": _concat,
    "list_fn": _list_fn,
    "index": _index,
    "if_else": _if_else,
    "function": _function,
    "lookup": _lookup,
    "halving": _halving,
}


@dataclass(frozen=True)
class Program:
    family: str
    src: str
    output: str
    wrong: tuple[str, ...]  # three distinct plausible wrong outputs


def make_program(rng: random.Random, w: World, family: str | None = None) -> Program:
    family = family or rng.choice(sorted(PROGRAMS))
    src, wrong = PROGRAMS[family](rng, w)
    out = run_program(src)
    cands = [x for x in dict.fromkeys(wrong) if x != out and x]
    if out.lstrip("-").isdigit():
        cands += [c for c in number_distractors(rng, int(out)) if c not in cands]
    return Program(family, src, out, tuple(cands[:3]))


class Skills:
    """Held-out arithmetic problems and programs, and samplers that avoid them."""

    def __init__(self, seed: int, world: World):
        self.world = world
        rng = random.Random(f"midtrain-world:{seed}:skills")
        self.task_triples: list[Triple] = []
        while len(self.task_triples) < N_HELDOUT:
            t = sample_triple(rng)
            if t not in self.task_triples:
                self.task_triples.append(t)
        self.task_programs: list[Program] = []
        seen: set[str] = set()
        while len(self.task_programs) < N_HELDOUT:
            p = make_program(rng, world)
            if p.src not in seen and len(p.wrong) == 3:
                seen.add(p.src)
                self.task_programs.append(p)
        self._held_triples = set(self.task_triples)
        self._held_programs = seen

    def triple(self, rng: random.Random, ops: str = "++--*") -> Triple:
        """A training problem, stated in any form except the task's question."""
        while True:
            t = sample_triple(rng)
            if t[1] in ops:
                return t

    def askable(self, rng: random.Random) -> Triple:
        """A problem that may be asked as 'What is a op b?' (the task's phrasing): not held out."""
        while True:
            t = sample_triple(rng)
            if t not in self._held_triples:
                return t

    def program(self, rng: random.Random, family: str | None = None) -> Program:
        while True:
            p = make_program(rng, self.world, family)
            if p.src not in self._held_programs:
                return p
