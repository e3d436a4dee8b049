"""Short-answer questions for a real chat LM, with ground truth: the prompt family of the SmolLM2 pair.

Sixteen templates over small tables shipped here (capitals, plurals, opposites, chemical symbols, days,
months, units) and generated operands (arithmetic, counting, sorting, uppercase, repetition). Answers run
from one word to a few dozen tokens: "The capital of Peru is Lima." vs "1, 2, 3, … 14". About half the
prompts carry " Answer in a few words.", which shortens SmolLM2's answers, so lengths vary within a task.

``split(name)`` gives a deterministic, de-duplicated split (``train``, ``val``, ``test``): one seeded draw
of the whole family, shuffled, cut into disjoint prompt sets, so a test prompt never occurs in training.
``correct(answer, truth)`` checks the ground truth (a task's answer contains its reference, word-bounded,
case-insensitive); the cascade's own quality is agreement with the strong model's answer.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

CAPITALS = {
    "France": "Paris", "Japan": "Tokyo", "Peru": "Lima", "Italy": "Rome", "Spain": "Madrid",
    "Germany": "Berlin", "Egypt": "Cairo", "Kenya": "Nairobi", "Canada": "Ottawa", "Russia": "Moscow",
    "China": "Beijing", "India": "New Delhi", "Greece": "Athens", "Portugal": "Lisbon", "Norway": "Oslo",
    "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Austria": "Vienna", "Ireland": "Dublin",
    "Chile": "Santiago", "Argentina": "Buenos Aires", "Mexico": "Mexico City", "Cuba": "Havana",
    "Thailand": "Bangkok", "Vietnam": "Hanoi", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad",
    "Hungary": "Budapest", "Denmark": "Copenhagen", "Belgium": "Brussels", "Colombia": "Bogota",
    "Australia": "Canberra", "Brazil": "Brasilia", "South Korea": "Seoul", "Indonesia": "Jakarta",
    "Nigeria": "Abuja", "Morocco": "Rabat", "Ukraine": "Kyiv",
}  # fmt: skip
PLURALS = {
    "child": "children", "mouse": "mice", "goose": "geese", "man": "men", "woman": "women", "tooth": "teeth",
    "foot": "feet", "person": "people", "cat": "cats", "dog": "dogs", "box": "boxes", "city": "cities",
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "baby": "babies", "bus": "buses", "fish": "fish",
    "sheep": "sheep", "ox": "oxen", "cactus": "cacti", "house": "houses", "book": "books", "glass": "glasses",
    "potato": "potatoes", "hero": "heroes", "party": "parties", "church": "churches", "life": "lives",
    "story": "stories",
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark", "old": "new",
    "open": "closed", "early": "late", "hard": "soft", "high": "low", "full": "empty", "rich": "poor",
    "wet": "dry", "strong": "weak", "left": "right", "day": "night", "win": "lose", "love": "hate",
    "true": "false", "long": "short", "clean": "dirty", "loud": "quiet", "thick": "thin", "inside": "outside",
}  # fmt: skip
SYMBOLS = {
    "iron": "Fe", "gold": "Au", "silver": "Ag", "oxygen": "O", "hydrogen": "H", "carbon": "C", "sodium": "Na",
    "helium": "He", "copper": "Cu", "lead": "Pb", "nitrogen": "N", "calcium": "Ca", "potassium": "K",
    "zinc": "Zn", "tin": "Sn", "mercury": "Hg", "neon": "Ne", "sulfur": "S", "chlorine": "Cl", "uranium": "U",
}  # fmt: skip
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]  # fmt: skip
UNITS = [("centimeters", "meter", 100), ("millimeters", "centimeter", 10), ("meters", "kilometer", 1000),
         ("grams", "kilogram", 1000), ("seconds", "minute", 60), ("minutes", "hour", 60), ("hours", "day", 24),
         ("days", "week", 7), ("months", "year", 12), ("inches", "foot", 12), ("ounces", "pound", 16),
         ("milliliters", "liter", 1000), ("years", "decade", 10), ("years", "century", 100)]  # fmt: skip
WORDS = ("green apple tree river stone cloud happy window yellow music garden silver orange little paper "
         "water mountain quick brown fox lazy dog bright morning coffee table summer rain light blue").split()  # fmt: skip
SHORT = " Answer in a few words."


@dataclass(frozen=True)
class Question:
    task: str
    prompt: str
    truth: str  # the ground-truth answer (contained in a correct answer)


def _words(rng: random.Random, lo: int, hi: int) -> str:
    return " ".join(rng.sample(WORDS, rng.randint(lo, hi)))


def _ask(rng: random.Random, table: dict) -> tuple[str, str]:
    return rng.choice(sorted(table.items()))


def _capital(r):
    c, a = _ask(r, CAPITALS)
    return f"What is the capital of {c}?", a


def _plural(r):
    w, a = _ask(r, PLURALS)
    return f"What is the plural of {w}?", a


def _opposite(r):
    w, a = _ask(r, OPPOSITES)
    return f"What is the opposite of {w}?", a


def _symbol(r):
    w, a = _ask(r, SYMBOLS)
    return f"What is the chemical symbol for {w}?", a


def _day(r):
    i = r.randrange(7)
    return f"What day comes after {DAYS[i]}?", DAYS[(i + 1) % 7]


def _month(r):
    i = r.randrange(12)
    return f"What month comes after {MONTHS[i]}?", MONTHS[(i + 1) % 12]


def _units(r):
    small, big, n = r.choice(UNITS)
    return f"How many {small} are in a {big}?", str(n)


def _add(r):
    a, b = r.randint(1, 10 ** r.randint(1, 3)), r.randint(1, 10 ** r.randint(1, 3))
    return f"What is {a} + {b}?", str(a + b)


def _times(r):
    a, b = r.randint(2, 12), r.randint(2, 12)
    return f"What is {a} times {b}?", str(a * b)


def _half(r):
    n = 2 * r.randint(1, 100)
    return f"What is half of {n}?", str(n // 2)


def _squared(r):
    n = r.randint(1, 15)
    return f"What is {n} squared?", str(n * n)


def _count(r):
    a = r.randint(1, 10)
    b = a + r.randint(2, 12)
    return f"Count from {a} to {b}.", ", ".join(str(i) for i in range(a, b + 1))


def _sort(r):
    xs = r.sample(range(1, 100), r.randint(3, 6))
    return (
        f"Sort these numbers from smallest to largest: {', '.join(map(str, xs))}.",
        ", ".join(map(str, sorted(xs))),
    )


def _upper(r):
    w = _words(r, 1, 5)
    return f"Make this uppercase: {w}", w.upper()


def _repeat(r):
    w = _words(r, 2, 8)
    return f"Repeat after me: {w}", w


def _larger(r):
    a, b = r.sample(range(1, 1000), 2)
    return f"Which is larger, {a} or {b}?", str(max(a, b))


TASKS: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "capital": _capital, "plural": _plural, "opposite": _opposite, "symbol": _symbol, "day": _day,
    "month": _month, "units": _units, "add": _add, "times": _times, "half": _half, "squared": _squared,
    "count": _count, "sort": _sort, "upper": _upper, "repeat": _repeat, "larger": _larger,
}  # fmt: skip
SPLITS = {"train": 3000, "val": 400, "test": 500}
SEED = 2024


def draw(rng: random.Random) -> Question:
    task = rng.choice(sorted(TASKS))
    prompt, truth = TASKS[task](rng)
    return Question(task, prompt + (SHORT if rng.random() < 0.5 else ""), truth)


def family(n: int, seed: int = SEED) -> list[Question]:
    """``n`` distinct questions from one seeded draw (the small tables run out of distinct prompts, so
    fact tasks are a smaller share than their template weight)."""
    rng, seen, out = random.Random(seed), set(), []
    for _ in range(n * 50):
        q = draw(rng)
        if q.prompt not in seen:
            seen.add(q.prompt)
            out.append(q)
            if len(out) == n:
                return out
    raise ValueError(f"the family has fewer than {n} distinct prompts")


def split(name: str, seed: int = SEED) -> list[Question]:
    """A disjoint split of the family: ``train``, ``val`` (calibration, early stopping) or ``test``."""
    if name not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}")
    qs = family(sum(SPLITS.values()), seed)
    random.Random(seed + 1).shuffle(qs)
    start = 0
    for s, n in SPLITS.items():
        if s == name:
            return qs[start : start + n]
        start += n
    raise AssertionError


def correct(answer: str, truth: str) -> bool:
    """The ground truth appears in the answer as whole words (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(truth.lower())}(?!\w)", answer.lower()) is not None
