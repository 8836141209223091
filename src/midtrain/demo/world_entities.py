"""The invented entities of the demo world and the facts about them.

Everything is made up (names from a small syllable set, attributes from short word lists), so
nothing a model knows about the real world helps, and the character set stays small. Each fact
has several question phrasings; exactly one of them (chosen by the seed) is reserved for the
`world_facts` task and never rendered into a training source.

Entities also have a popularity: within each kind (countries, cities, people, metals) the seed
ranks them and rank r gets weight 1/r^POPULARITY_EXPONENT (Zipf). Web text mentions entities
in proportion to it, the way real web text talks about a few famous things and rarely about the
long tail; an encyclopedia (`hq`) has one article per entity whatever its popularity.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr")
ONSETS += ("st", "th", "tr")
VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou")
CODAS = ("", "", "", "", "n", "r", "l", "s", "m")

LANG_SUFFIXES = ("ic", "ish", "ese")
EXPORTS = ("wool", "copper", "salt", "tea", "glass", "rice", "silk", "timber", "fish", "iron")
EXPORTS += ("wine", "paper", "honey", "cotton")
PROFESSIONS = ("painter", "sailor", "physician", "weaver", "poet", "merchant", "builder")
PROFESSIONS += ("farmer", "teacher", "potter", "baker", "singer", "judge", "miner", "scholar")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "purple", "orange", "grey", "pink")

N_COUNTRIES = 24
CITIES_PER_COUNTRY = 3
N_LANGUAGES = 10
N_PEOPLE = 64
N_ELEMENTS = 16
POPULARITY_EXPONENT = 1.8


@dataclass(frozen=True)
class Attribute:
    """One kind of fact: who it is about, how it is asked and stated, and its answer pool."""

    name: str
    subject_kind: str  # country | city | person | element
    pool: str  # which world list the answer and the distractors come from
    questions: tuple[str, ...]  # question phrasings, "{s}" = subject
    statements: tuple[str, ...]  # declarative phrasings, "{s}" subject, "{v}" value


ATTRIBUTES: dict[str, Attribute] = {
    a.name: a
    for a in (
        Attribute(
            "capital",
            "country",
            "capitals",
            (
                "What is the capital of {s}?",
                "Which city is the capital of {s}?",
                "Name the capital city of {s}.",
                "What city is the seat of government of {s}?",
            ),
            (
                "The capital of {s} is {v}.",
                "{v} is the capital of {s}.",
                "{s} is governed from its capital, {v}.",
                "{v}, the capital of {s}, is its largest city.",
            ),
        ),
        Attribute(
            "language",
            "country",
            "languages",
            (
                "What language is spoken in {s}?",
                "Which language do people in {s} speak?",
                "What is the main language of {s}?",
            ),
            (
                "People in {s} speak {v}.",
                "The main language of {s} is {v}.",
                "{v} is the language spoken in {s}.",
                "In {s} most people speak {v}.",
            ),
        ),
        Attribute(
            "export",
            "country",
            "exports",
            (
                "What is the main export of {s}?",
                "What does {s} export most?",
                "Which good is {s} best known for selling abroad?",
            ),
            (
                "The main export of {s} is {v}.",
                "{s} is known for its {v}.",
                "Most of the {v} sold abroad comes from {s}.",
                "{s} exports {v} to its neighbours.",
            ),
        ),
        Attribute(
            "country",
            "city",
            "countries",
            (
                "In which country is {s}?",
                "Which country is the city of {s} in?",
                "{s} is a city in which country?",
            ),
            (
                "{s} is a city in {v}.",
                "The city of {s} lies in {v}.",
                "{s}, in {v}, is an old city.",
                "In {v} you can visit the city of {s}.",
            ),
        ),
        Attribute(
            "birthplace",
            "person",
            "cities",
            (
                "Where was {s} born?",
                "In which city was {s} born?",
                "What is the birthplace of {s}?",
            ),
            (
                "{s} was born in {v}.",
                "{s} grew up in {v}, the city of their birth.",
                "The city of {v} is where {s} was born.",
                "Born in {v}, {s} left home young.",
            ),
        ),
        Attribute(
            "profession",
            "person",
            "professions",
            (
                "What was the profession of {s}?",
                "What did {s} work as?",
                "What was {s} known as?",
            ),
            (
                "{s} was a {v}.",
                "{s} worked as a {v} for many years.",
                "The {v} {s} is well known.",
                "As a {v}, {s} was famous.",
            ),
        ),
        Attribute(
            "color",
            "element",
            "colors",
            (
                "What color is {s}?",
                "What is the color of pure {s}?",
                "Which color does {s} have?",
            ),
            (
                "{s} is a {v} metal.",
                "Pure {s} has a {v} color.",
                "The metal {s} is {v}.",
                "A piece of {s} looks {v}.",
            ),
        ),
        Attribute(
            "discoverer",
            "element",
            "people",
            (
                "Who discovered {s}?",
                "Which person first found {s}?",
                "Who was the discoverer of {s}?",
            ),
            (
                "{s} was discovered by {v}.",
                "{v} discovered {s}.",
                "The metal {s} was first found by {v}.",
                "{v} is known for discovering {s}.",
            ),
        ),
    )
}


@dataclass(frozen=True)
class Fact:
    attr: str
    subject: str
    value: str
    task_phrasing: int  # index into the attribute's questions, reserved for the task

    def question(self, i: int) -> str:
        return ATTRIBUTES[self.attr].questions[i].format(s=self.subject)

    @property
    def task_question(self) -> str:
        return self.question(self.task_phrasing)

    def train_question(self, rng: random.Random) -> str:
        """A phrasing of this fact's question that the task never uses."""
        n = len(ATTRIBUTES[self.attr].questions)
        i = rng.randrange(n - 1)
        return self.question(i + (i >= self.task_phrasing))

    def statement(self, rng: random.Random) -> str:
        return rng.choice(ATTRIBUTES[self.attr].statements).format(s=self.subject, v=self.value)


@dataclass
class World:
    """The entities and their facts; `pools` maps a pool name to its answer values."""

    countries: list[str]
    cities: list[str]
    people: list[str]
    elements: list[str]
    languages: list[str]
    pools: dict[str, list[str]]
    facts: list[Fact]
    popularity: dict[str, float]  # per entity; mean 1 within its kind
    by_subject: dict[str, list[Fact]] = field(default_factory=dict)
    lookup: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in self.facts:
            self.by_subject.setdefault(f.subject, []).append(f)
            self.lookup[(f.subject, f.attr)] = f.value

    def get(self, subject: str, attr: str) -> str:
        return self.lookup[(subject, attr)]

    def cities_of(self, country: str) -> list[str]:
        return [c for c in self.cities if self.get(c, "country") == country]


class _Namer:
    """Unique invented names from the syllable set."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def syllable(self) -> str:
        r = self.rng
        return r.choice(ONSETS) + r.choice(VOWELS) + r.choice(CODAS)

    def name(self, lo: int, hi: int, suffix: str = "") -> str:
        while True:
            n = self.rng.randint(lo, hi)
            word = "".join(self.syllable() for _ in range(n)) + suffix
            if 4 <= len(word) <= 9 and word not in self.used:
                self.used.add(word)
                return word.capitalize()


def build_world(seed: int) -> World:
    """The entities and facts for `seed` (independent of the world's scale)."""
    rng = random.Random(f"midtrain-world:{seed}:entities")
    namer = _Namer(rng)
    countries = [namer.name(2, 3) for _ in range(N_COUNTRIES)]
    languages = [namer.name(1, 2, rng.choice(LANG_SUFFIXES)) for _ in range(N_LANGUAGES)]
    cities, capitals, facts = [], [], []

    def add(attr: str, subject: str, value: str) -> None:
        phrasing = rng.randrange(len(ATTRIBUTES[attr].questions))
        facts.append(Fact(attr, subject, value, phrasing))

    for country in countries:
        own = [namer.name(2, 2) for _ in range(CITIES_PER_COUNTRY)]
        cities += own
        capitals.append(own[0])
        add("capital", country, own[0])
        add("language", country, rng.choice(languages))
        add("export", country, rng.choice(EXPORTS))
        for city in own:
            add("country", city, country)
    people = [f"{namer.name(1, 2)} {namer.name(2, 2)}" for _ in range(N_PEOPLE)]
    for person in people:
        add("birthplace", person, rng.choice(cities))
        add("profession", person, rng.choice(PROFESSIONS))
    elements = [namer.name(1, 2, "ium") for _ in range(N_ELEMENTS)]
    discoverers = rng.sample(people, N_ELEMENTS)
    for element, person in zip(elements, discoverers, strict=True):
        add("color", element, rng.choice(COLORS))
        add("discoverer", element, person)
    pools = {
        "capitals": capitals,
        "languages": languages,
        "exports": list(EXPORTS),
        "countries": countries,
        "cities": cities,
        "professions": list(PROFESSIONS),
        "colors": list(COLORS),
        "people": people,
    }
    popularity = {}
    prng = random.Random(f"midtrain-world:{seed}:popularity")
    for kind in (countries, cities, people, elements):
        ranked = prng.sample(kind, len(kind))
        weights = [1 / (r + 1) ** POPULARITY_EXPONENT for r in range(len(ranked))]
        mean = sum(weights) / len(weights)
        popularity.update({e: w / mean for e, w in zip(ranked, weights, strict=True)})
    return World(countries, cities, people, elements, languages, pools, facts, popularity)
