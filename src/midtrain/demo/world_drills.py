"""Generators of the drill-like sources of the demo world: flan (instruction templates), math
(worked arithmetic) and code (small programs with their outputs). They draw facts, sums and
programs uniformly from the whole table."""

from __future__ import annotations

import random
from collections.abc import Callable

from midtrain.demo.world_entities import ATTRIBUTES
from midtrain.demo.world_skills import Triple, fmt, value
from midtrain.demo.world_text import Ctx, program_block, word_problem

# --- flan: many instruction templates, short and repetitive ---------------------------------


def _fact_tpl(fmt_: str) -> Callable[[random.Random, Ctx], str]:
    def gen(rng: random.Random, ctx: Ctx) -> str:
        f = ctx.fact(rng)
        return fmt_.format(q=f.train_question(rng), a=f.value, s=f.subject)

    return gen


def _true_false(rng: random.Random, ctx: Ctx) -> str:
    f = ctx.fact(rng)
    pool = ctx.world.pools[ATTRIBUTES[f.attr].pool]
    v = f.value if rng.random() < 0.5 else rng.choice(pool)
    stmt = rng.choice(ATTRIBUTES[f.attr].statements).format(s=f.subject, v=v)
    return f"True or false: {stmt}\nAnswer: {'True' if v == f.value else 'False'}"


def _fill_blank(rng: random.Random, ctx: Ctx) -> str:
    f = ctx.fact(rng)
    stmt = rng.choice(ATTRIBUTES[f.attr].statements).format(s=f.subject, v="___")
    return f"Fill in the blank: {stmt}\nAnswer: {f.value}"


def _choose(rng: random.Random, ctx: Ctx) -> str:
    f = ctx.fact(rng)
    pool = [v for v in ctx.world.pools[ATTRIBUTES[f.attr].pool] if v != f.value]
    opts = rng.sample(pool, 2) + [f.value]
    rng.shuffle(opts)
    return f"{f.train_question(rng)}\nOptions: {', '.join(opts)}\nAnswer: {f.value}"


ARITH_TEMPLATES = (
    "Question: What is {e}?\nAnswer: {v}",  # the task's phrasing: held-out problems never
    "Compute {e}.\nAnswer: {v}",
    "Q: {e} = ?\nA: {v}",
    "Solve: {e}\nResult: {v}",
)


def _arith(rng: random.Random, ctx: Ctx) -> str:
    i = rng.randrange(len(ARITH_TEMPLATES))
    t = ctx.skills.askable(rng) if i == 0 else ctx.skills.triple(rng)
    return ARITH_TEMPLATES[i].format(e=fmt(t), v=value(t))


def _code_out(rng: random.Random, ctx: Ctx) -> str:
    p = ctx.skills.program(rng)
    return f"What does the following Python code print?\n{p.src}\nAnswer: {p.output}"


def _compare(rng: random.Random, ctx: Ctx) -> str:
    a, b = rng.sample(range(100), 2)
    return f"Which number is larger, {a} or {b}?\nAnswer: {max(a, b)}"


def _parity(rng: random.Random, ctx: Ctx) -> str:
    n = rng.randint(0, 99)
    return f"Is {n} even or odd?\nAnswer: {'even' if n % 2 == 0 else 'odd'}"


def _sort(rng: random.Random, ctx: Ctx) -> str:
    xs = rng.sample(range(50), rng.randint(3, 5))
    return f"Sort these numbers from smallest to largest: {', '.join(map(str, xs))}\nAnswer: {', '.join(map(str, sorted(xs)))}"


def _upper(rng: random.Random, ctx: Ctx) -> str:
    word = rng.choice(ctx.world.cities)
    return f"Write the word in capital letters: {word}\nAnswer: {word.upper()}"


def _count_words(rng: random.Random, ctx: Ctx) -> str:
    s = rng.choice(ctx.world.facts).statement(rng)
    return f"How many words are in this sentence? {s}\nAnswer: {len(s.split())}"


def _sentiment(rng: random.Random, ctx: Ctx) -> str:
    good = rng.random() < 0.5
    adj = rng.choice(
        ("lovely", "great", "kind", "clean") if good else ("awful", "dirty", "rude", "sad")
    )
    city = rng.choice(ctx.world.cities)
    return f"Review: The hotel in {city} was {adj}.\nIs this review positive or negative?\nAnswer: {'positive' if good else 'negative'}"


def _first_letter(rng: random.Random, ctx: Ctx) -> str:
    word = rng.choice(ctx.world.countries)
    return f"What is the first letter of {word}?\nAnswer: {word[0]}"


FLAN: dict[str, Callable[[random.Random, Ctx], str]] = {
    "qa": _fact_tpl("Question: {q}\nAnswer: {a}"),
    "qa_short": _fact_tpl("Q: {q}\nA: {a}"),
    "answer_the": _fact_tpl("Answer the following question.\n{q}\nAnswer: {a}"),
    "instruction": _fact_tpl("Instruction: Answer briefly.\nInput: {q}\nOutput: {a}"),
    "about": _fact_tpl("Here is a question about {s}. {q}\nThe answer is {a}."),
    "one_word": _fact_tpl("{q} Reply with one word.\n{a}"),
    "true_false": _true_false,
    "fill_blank": _fill_blank,
    "choose": _choose,
    "arith": _arith,
    "code_out": _code_out,
    "compare": _compare,
    "parity": _parity,
    "sort": _sort,
    "upper": _upper,
    "count_words": _count_words,
    "sentiment": _sentiment,
    "first_letter": _first_letter,
}


def flan_doc(rng: random.Random, ctx: Ctx) -> str:
    names = sorted(FLAN)
    return "\n\n".join(FLAN[rng.choice(names)](rng, ctx) for _ in range(rng.randint(1, 4)))


# --- math: worked arithmetic -----------------------------------------------------------------


def _column_add(a: int, b: int) -> str:
    a1, b1 = a % 10, b % 10
    s1 = a1 + b1
    carry = s1 // 10
    s2 = a // 10 + b // 10 + carry
    tens = f"{a // 10} + {b // 10} + {carry} = {s2}" if carry else f"{a // 10} + {b // 10} = {s2}"
    return (
        f"Ones: {a1} + {b1} = {s1}, write {s1 % 10}"
        + (f" and carry {carry}. " if carry else ". ")
        + f"Tens: {tens}."
    )


def _column_sub(a: int, b: int) -> str:
    a1, b1 = a % 10, b % 10
    if a1 >= b1:
        ones, borrow = f"Ones: {a1} - {b1} = {a1 - b1}.", 0
    else:
        ones, borrow = (
            f"Ones: {a1} is less than {b1}, borrow: {a1 + 10} - {b1} = {a1 + 10 - b1}.",
            1,
        )
    t = a // 10 - borrow - b // 10
    tens = (
        f"Tens: {a // 10} - {borrow} - {b // 10} = {t}."
        if borrow
        else f"Tens: {a // 10} - {b // 10} = {t}."
    )
    return f"{ones} {tens}"


def _mul_steps(a: int, b: int) -> str:
    lo = a * (b % 10)
    hi = a * (b // 10)
    return f"{a} * {b % 10} = {lo} and {a} * {b // 10} tens = {hi} tens, so {hi * 10} + {lo} = {a * b}."


def worked(t: Triple) -> str:
    a, op, b = t
    steps = {"+": _column_add, "-": _column_sub, "*": _mul_steps}[op](a, b)
    return f"{steps} So {fmt(t)} = {value(t)}."


def math_doc(rng: random.Random, ctx: Ctx) -> str:
    out = []
    for _ in range(rng.randint(2, 5)):
        t = ctx.skills.triple(rng)
        kind = rng.choices(range(4), weights=(4, 3, 1, 2))[0]
        if kind == 0:
            out.append(f"Problem: Compute {fmt(t)}.\nSolution: {worked(t)}\nAnswer: {value(t)}")
        elif kind == 1:
            out.append(f"Problem: {word_problem(rng, ctx, t)}\nCheck: {worked(t)}")
        elif kind == 2:
            k = rng.randint(2, 9)
            rows = ", ".join(f"{k} * {i} = {k * i}" for i in range(1, 11))
            out.append(f"Times table of {k}: {rows}.")
        else:
            u = ctx.skills.triple(rng, ops="+-")
            v = (value(u), "+", rng.randint(1, 20))
            out.append(
                f"Problem: First compute {fmt(u)}, then add {v[2]}.\n"
                f"Solution: {fmt(u)} = {value(u)}. Then {fmt(v)} = {value(v)}.\nAnswer: {value(v)}"
            )
    return "\n\n".join(out)


# --- code: small programs with their outputs -------------------------------------------------


def code_doc(rng: random.Random, ctx: Ctx) -> str:
    n = rng.randint(1, 4)
    head = f"# examples{rng.randint(1, 99)}.py: small programs and what they print"
    blocks = [program_block(ctx.skills.program(rng), rng) for _ in range(n)]
    return head + "\n\n" + "\n\n".join(blocks)
