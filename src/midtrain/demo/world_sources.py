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
from dataclasses import dataclass

from midtrain.demo.world_drills import FLAN, code_doc, flan_doc, math_doc
from midtrain.demo.world_entities import World
from midtrain.demo.world_skills import fmt, value
from midtrain.demo.world_text import (
    DAYS,
    FOODS,
    MOODS,
    NAMES,
    WEATHER,
    Ctx,
    word_problem,
)

__all__ = ["FLAN", "INFOBOX", "SOURCES", "Ctx", "Source", "hq_doc", "web_doc"]

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
