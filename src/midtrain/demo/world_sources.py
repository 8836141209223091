"""Document generators for the five training sources of the demo world.

Each source is a registry entry: a function drawing one document from an RNG, and its size at
scale 1.0. The sources differ in content and format only; none is tuned toward any task. Facts
come from `World`, arithmetic and programs from `Skills`, which never hand out held-out items.

Web text picks the entities it talks about by popularity (`Ctx.popular*`: a Zipf law over each
kind), so it repeats the famous ones and rarely mentions the long tail. The other sources pick
uniformly: an encyclopedia has an article per entity, and templated instruction data and code
draw from the whole table.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

from midtrain.demo.world_entities import ATTRIBUTES, Fact, World
from midtrain.demo.world_skills import Program, Skills, Triple, fmt, value

ENTITY_KINDS = ("countries", "cities", "people", "elements")


@dataclass(frozen=True)
class Ctx:
    world: World
    skills: Skills
    _cum: dict[str, list[float]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        pop = self.world.popularity
        cum = {k: list(accumulate(pop[e] for e in getattr(self.world, k))) for k in ENTITY_KINDS}
        cum["facts"] = list(accumulate(pop[f.subject] for f in self.world.facts))
        object.__setattr__(self, "_cum", cum)

    def popular(self, rng: random.Random, kind: str) -> str:
        """An entity of `kind` (countries, cities, people, elements), drawn by popularity."""
        return rng.choices(getattr(self.world, kind), cum_weights=self._cum[kind])[0]

    def popular_among(self, rng: random.Random, names: list[str]) -> str:
        return rng.choices(names, weights=[self.world.popularity[n] for n in names])[0]

    def popular_fact(self, rng: random.Random) -> Fact:
        """A fact drawn by its subject's popularity (each kind keeps its share of all facts)."""
        return rng.choices(self.world.facts, cum_weights=self._cum["facts"])[0]

    def fact(self, rng: random.Random, kinds: tuple[str, ...] | None = None) -> Fact:
        """A fact drawn uniformly (the whole table, as an encyclopedia or a template covers it)."""
        facts = self.world.facts
        while True:
            f = rng.choice(facts)
            if kinds is None or f.attr in kinds:
                return f

    def facts_about(self, subject: str) -> list[Fact]:
        return self.world.by_subject[subject]


# --- shared pieces ---------------------------------------------------------------------------

NAMES = ("Ana", "Bo", "Cato", "Dee", "Eli", "Fen", "Gus", "Hana", "Ivo", "Juno", "Kit", "Lea")
NAMES += ("Milo", "Nia", "Oren", "Pia", "Rex", "Sol", "Tam", "Uma", "Vic", "Wren")
MOODS = ("I think", "As far as I know,", "Pretty sure", "My teacher said", "I read that")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
WEATHER = ("rain", "sun", "wind", "snow", "fog", "clouds")
FOODS = ("bread", "soup", "fish", "rice", "cheese", "apples", "beans", "cake", "tea")
THINGS = ("bales", "boxes", "baskets", "jars", "sacks", "crates")


def program_block(p: Program, rng: random.Random) -> str:
    """A program with its output, in one of the code formats people write."""
    style = rng.randrange(3)
    if style == 0:
        return f"```python\n{p.src}\n```\nOutput: {p.output}"
    if style == 1:
        return f"{p.src}\n# Output: {p.output}"
    return f"{p.src}\n\nRunning this prints {p.output}."


def word_problem(rng: random.Random, ctx: Ctx, t: Triple, city: str | None = None) -> str:
    city = city or rng.choice(ctx.world.cities)
    who = rng.choice(NAMES)
    thing = rng.choice(THINGS)
    good = ctx.world.get(ctx.world.get(city, "country"), "export")
    a, op, b = t
    if op == "+":
        return f"{who} from {city} has {a} {thing} of {good} and gets {b} more, so {who} has {value(t)} {thing}."
    if op == "-":
        return f"{who} from {city} had {a} {thing} of {good} and sold {b}, so {value(t)} {thing} are left."
    return f"{who} packs {a} {thing} with {b} jars of {good} each, which makes {value(t)} jars."


# --- web: broad prose, forum threads, Q/A pages, a little arithmetic and code --------------


def web_travel(rng: random.Random, ctx: Ctx) -> str:
    w = ctx.world
    country = ctx.popular(rng, "countries")
    cap, lang, exp = (w.get(country, a) for a in ("capital", "language", "export"))
    city = ctx.popular_among(rng, w.cities_of(country))
    day = rng.choice(DAYS)
    lines = [
        f"Our trip to {country}",
        f"We reached {cap} on a {day} in the {rng.choice(WEATHER)}.",
        rng.choice(ctx.facts_about(country)).statement(rng),
        f"Most signs were in {lang}, so we learned a few words.",
        f"From {cap} we took a slow train to {city}.",
        f"The market in {city} was full of {exp} and {rng.choice(FOODS)}.",
        rng.choice(ctx.facts_about(city)).statement(rng),
        f"We paid {rng.randint(2, 40)} coins for a room and ate {rng.choice(FOODS)} every night.",
        "Would go again.",
    ]
    return "\n".join(lines[:1] + [" ".join(lines[1:])])


def web_story(rng: random.Random, ctx: Ctx) -> str:
    w = ctx.world
    person = ctx.popular(rng, "people")
    facts = ctx.facts_about(person)
    birth = w.get(person, "birthplace")
    found = [e for e in w.elements if w.get(e, "discoverer") == person]
    parts = [f.statement(rng) for f in rng.sample(facts, len(facts))]
    parts.append(rng.choice(ctx.facts_about(birth)).statement(rng))
    if found:
        e = found[0]
        parts += [ctx.facts_about(e)[1].statement(rng), ctx.facts_about(e)[0].statement(rng)]
    else:
        parts.append(f"Later {person} moved to {ctx.popular(rng, 'cities')} and stayed there.")
    parts.append(f"People still talk about {person} on {rng.choice(DAYS)}s.")
    return f"A short life of {person}\n" + " ".join(parts)


def web_forum(rng: random.Random, ctx: Ctx) -> str:
    a, b, c = rng.sample(NAMES, 3)
    kind = rng.randrange(4)
    if kind < 2:
        f = ctx.popular_fact(rng)
        q, ans = f.train_question(rng), f.value
        body = [
            f"Thread: quick question about {f.subject}",
            f"{a}: {q} I keep forgetting.",
            f"{b}: {rng.choice(MOODS)} {f.statement(rng)}",
            f"{c}: Yes, {ans}. {rng.choice(ctx.facts_about(f.subject)).statement(rng)}",
            f"{a}: Thanks!",
        ]
    elif kind == 2:
        t = ctx.skills.triple(rng)
        body = [
            "Thread: help with homework",
            f"{a}: How much is {fmt(t)}? I got {value(t) + rng.choice((1, -1, 10))}.",
            f"{b}: No, {fmt(t)} = {value(t)}.",
            f"{c}: {word_problem(rng, ctx, ctx.skills.triple(rng), ctx.popular(rng, 'cities'))}",
        ]
    else:
        p = ctx.skills.program(rng)
        body = [
            "Thread: python output question",
            f"{a}: Why does this print {p.output}?",
            p.src,
            f"{b}: Run it and see, it prints {p.output}. It does not print {p.wrong[0]}.",
        ]
    return "\n".join(body)


def web_qa_page(rng: random.Random, ctx: Ctx) -> str:
    """A FAQ-style page: a few 'Question: ... Answer: ...' pairs about one topic."""
    pairs = []
    for _ in range(rng.randint(2, 5)):
        f = ctx.popular_fact(rng)
        pairs.append(f"Question: {f.train_question(rng)}\nAnswer: {f.value}")
    return "Frequently asked questions\n\n" + "\n\n".join(pairs)


def web_daily(rng: random.Random, ctx: Ctx) -> str:
    city = ctx.popular(rng, "cities")
    who = rng.choice(NAMES)
    day = rng.choice(DAYS)
    lines = [
        f"{day} in {city}",
        f"{who} woke up to {rng.choice(WEATHER)} and made {rng.choice(FOODS)} for breakfast.",
        f"The streets of {city} were quiet.",
        word_problem(rng, ctx, ctx.skills.triple(rng, ops="+-"), city),
        f"In the evening {who} read a book by {ctx.popular(rng, 'people')}.",
        ctx.popular_fact(rng).statement(rng),
    ]
    return "\n".join(lines[:1] + [" ".join(lines[1:])])


def web_list(rng: random.Random, ctx: Ctx) -> str:
    w = ctx.world
    attr = rng.choice(["capital", "language", "export", "color", "profession"])
    subs = [f.subject for f in w.facts if f.attr == attr]
    k, pick = rng.randint(4, 8), []
    while len(pick) < k:
        s = ctx.popular_among(rng, subs)
        if s not in pick:
            pick.append(s)
    title = f"Some facts: {attr}"
    return title + "\n" + "\n".join(f"- {w.get(s, attr)}: {s}" for s in pick)


WEB: dict[str, tuple[Callable[[random.Random, Ctx], str], int]] = {
    "travel": (web_travel, 3),
    "story": (web_story, 3),
    "forum": (web_forum, 3),
    "qa_page": (web_qa_page, 1),
    "daily": (web_daily, 4),
    "list": (web_list, 1),
}


def web_doc(rng: random.Random, ctx: Ctx) -> str:
    names = list(WEB)
    gen = rng.choices(names, weights=[WEB[n][1] for n in names])[0]
    return WEB[gen][0](rng, ctx)


# --- hq: encyclopedic articles, facts only, no question/answer format ------------------------


INFOBOX = {
    "capital": "Capital",
    "language": "Language",
    "export": "Main export",
    "country": "Country",
    "birthplace": "Born in",
    "profession": "Occupation",
    "color": "Color",
    "discoverer": "Discovered by",
}


def _known_as(w: World, person: str) -> str:
    return f"{person}, a {w.get(person, 'profession')}"


def _and(xs: list[str], sep: str = ", ") -> str:
    return xs[0] if len(xs) == 1 else sep.join(xs[:-1]) + " and " + xs[-1]


def hq_doc(rng: random.Random, ctx: Ctx) -> str:
    """An encyclopedia article: infobox, then the facts in prose and the related entities."""
    w = ctx.world
    subject = rng.choice(w.countries + w.cities + w.people + w.elements)
    facts = list(ctx.facts_about(subject))
    box = "\n".join(f"{INFOBOX[f.attr]}: {f.value}" for f in facts)
    rng.shuffle(facts)
    sents = [f.statement(rng) for f in facts]
    if subject in w.countries:
        cities = w.cities_of(subject)
        sents.append(f"Its cities include {_and(cities)}.")
        sents.append(f"The country is known for its {w.get(subject, 'export')} trade.")
        born = [p for p in w.people if w.get(w.get(p, "birthplace"), "country") == subject]
        if born:
            people = _and(
                [f"{_known_as(w, p)} born in {w.get(p, 'birthplace')}" for p in born], "; "
            )
            sents.append(f"Notable people from {subject} include {people}.")
    elif subject in w.cities:
        country = w.get(subject, "country")
        sents.append(f"{country} has {w.get(country, 'capital')} as its capital.")
        sents.append(f"The people of {subject} speak {w.get(country, 'language')}.")
        sents.append(f"Its market trades in {w.get(country, 'export')}.")
        born = [p for p in w.people if w.get(p, "birthplace") == subject]
        if born:
            people = _and([_known_as(w, p) for p in born], "; ")
            sents.append(f"Notable people born in {subject} include {people}.")
    elif subject in w.people:
        birth = w.get(subject, "birthplace")
        sents.append(f"{birth} is a city in {w.get(birth, 'country')}.")
        for e in w.elements:
            if w.get(e, "discoverer") == subject:
                sents.append(f"{subject} discovered {e}, a {w.get(e, 'color')} metal.")
    else:
        who = w.get(subject, "discoverer")
        sents.append(f"{who} was a {w.get(who, 'profession')} from {w.get(who, 'birthplace')}.")
    return f"{subject}\n\n{box}\n\n" + " ".join(sents)


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


@dataclass(frozen=True)
class Source:
    doc: Callable[[random.Random, Ctx], str]
    bytes_at_scale_1: int
    description: str


SOURCES: dict[str, Source] = {
    "web": Source(
        web_doc, 6_000_000, "broad prose, forum threads, Q/A pages, some arithmetic and code"
    ),
    "hq": Source(hq_doc, 1_500_000, "encyclopedic articles about entities, facts only, no Q/A"),
    "flan": Source(flan_doc, 1_500_000, "instruction/QA templates, short and repetitive"),
    "math": Source(math_doc, 1_500_000, "worked arithmetic and word problems"),
    "code": Source(code_doc, 1_500_000, "small Python programs with their printed outputs"),
}
