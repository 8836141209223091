"""What every source of the demo world draws from: the world and skills (`Ctx`), how web text
picks entities by popularity, and small pieces shared by several sources (names, word problems,
program blocks)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from itertools import accumulate

from midtrain.demo.world_entities import Fact, World
from midtrain.demo.world_skills import Program, Skills, Triple, value

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
