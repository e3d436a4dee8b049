"""Short-answer questions for a real chat LM, with ground truth: the prompt family of the SmolLM2 pair.

Twenty-one tasks: facts from small tables shipped here (capitals, continents, plurals, past tenses, opposites,
chemical symbols, young animals, colours, legs, days, months, units), each asked three ways, and generated
operands (sums, products, halves, squares, comparisons, counting, sorting, uppercase, repetition). Answers run
from one word to a few dozen tokens: "The capital of Peru is Lima." vs a 32-token ramble. About half the
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

COUNTRIES = {  # country: (capital, continent)
    "France": ("Paris", "Europe"), "Japan": ("Tokyo", "Asia"), "Peru": ("Lima", "South America"),
    "Italy": ("Rome", "Europe"), "Spain": ("Madrid", "Europe"), "Germany": ("Berlin", "Europe"),
    "Egypt": ("Cairo", "Africa"), "Kenya": ("Nairobi", "Africa"), "Canada": ("Ottawa", "North America"),
    "Russia": ("Moscow", "Europe"), "China": ("Beijing", "Asia"), "India": ("New Delhi", "Asia"),
    "Greece": ("Athens", "Europe"), "Portugal": ("Lisbon", "Europe"), "Norway": ("Oslo", "Europe"),
    "Sweden": ("Stockholm", "Europe"), "Finland": ("Helsinki", "Europe"), "Poland": ("Warsaw", "Europe"),
    "Austria": ("Vienna", "Europe"), "Ireland": ("Dublin", "Europe"), "Chile": ("Santiago", "South America"),
    "Argentina": ("Buenos Aires", "South America"), "Mexico": ("Mexico City", "North America"),
    "Cuba": ("Havana", "North America"), "Thailand": ("Bangkok", "Asia"), "Vietnam": ("Hanoi", "Asia"),
    "Turkey": ("Ankara", "Asia"), "Iran": ("Tehran", "Asia"), "Iraq": ("Baghdad", "Asia"),
    "Hungary": ("Budapest", "Europe"), "Denmark": ("Copenhagen", "Europe"), "Belgium": ("Brussels", "Europe"),
    "Colombia": ("Bogota", "South America"), "Australia": ("Canberra", "Oceania"),
    "Brazil": ("Brasilia", "South America"), "South Korea": ("Seoul", "Asia"), "Indonesia": ("Jakarta", "Asia"),
    "Nigeria": ("Abuja", "Africa"), "Morocco": ("Rabat", "Africa"), "Ukraine": ("Kyiv", "Europe"),
    "Netherlands": ("Amsterdam", "Europe"), "Switzerland": ("Bern", "Europe"), "Czechia": ("Prague", "Europe"),
    "Romania": ("Bucharest", "Europe"), "Bulgaria": ("Sofia", "Europe"), "Serbia": ("Belgrade", "Europe"),
    "Croatia": ("Zagreb", "Europe"), "Iceland": ("Reykjavik", "Europe"), "Estonia": ("Tallinn", "Europe"),
    "Latvia": ("Riga", "Europe"), "Lithuania": ("Vilnius", "Europe"), "Ghana": ("Accra", "Africa"),
    "Ethiopia": ("Addis Ababa", "Africa"), "Senegal": ("Dakar", "Africa"), "Algeria": ("Algiers", "Africa"),
    "Tunisia": ("Tunis", "Africa"), "Uganda": ("Kampala", "Africa"), "Zimbabwe": ("Harare", "Africa"),
    "Pakistan": ("Islamabad", "Asia"), "Bangladesh": ("Dhaka", "Asia"), "Nepal": ("Kathmandu", "Asia"),
    "Philippines": ("Manila", "Asia"), "Malaysia": ("Kuala Lumpur", "Asia"), "Mongolia": ("Ulaanbaatar", "Asia"),
    "Afghanistan": ("Kabul", "Asia"), "Syria": ("Damascus", "Asia"), "Jordan": ("Amman", "Asia"),
    "Lebanon": ("Beirut", "Asia"), "Qatar": ("Doha", "Asia"), "Venezuela": ("Caracas", "South America"),
    "Ecuador": ("Quito", "South America"), "Bolivia": ("Sucre", "South America"),
    "Uruguay": ("Montevideo", "South America"), "Paraguay": ("Asuncion", "South America"),
    "Jamaica": ("Kingston", "North America"), "Panama": ("Panama City", "North America"),
    "New Zealand": ("Wellington", "Oceania"), "Fiji": ("Suva", "Oceania"),
}  # fmt: skip
CAPITALS = {c: cap for c, (cap, _) in COUNTRIES.items()}
PLURALS = {
    "child": "children", "mouse": "mice", "goose": "geese", "man": "men", "woman": "women", "tooth": "teeth",
    "foot": "feet", "person": "people", "cat": "cats", "dog": "dogs", "box": "boxes", "city": "cities",
    "knife": "knives", "leaf": "leaves", "wolf": "wolves", "baby": "babies", "bus": "buses", "fish": "fish",
    "sheep": "sheep", "ox": "oxen", "cactus": "cacti", "house": "houses", "book": "books", "glass": "glasses",
    "potato": "potatoes", "hero": "heroes", "party": "parties", "church": "churches", "life": "lives",
    "story": "stories", "wife": "wives", "louse": "lice", "deer": "deer", "tomato": "tomatoes", "key": "keys",
    "toy": "toys", "day": "days", "lady": "ladies", "fox": "foxes", "dish": "dishes", "watch": "watches",
    "half": "halves", "shelf": "shelves", "thief": "thieves", "loaf": "loaves", "crisis": "crises",
    "mouth": "mouths", "apple": "apples", "chair": "chairs", "tree": "trees",
}  # fmt: skip
PAST = {
    "run": "ran", "go": "went", "eat": "ate", "see": "saw", "write": "wrote", "sing": "sang", "swim": "swam",
    "drink": "drank", "take": "took", "give": "gave", "come": "came", "know": "knew", "fly": "flew",
    "drive": "drove", "speak": "spoke", "break": "broke", "choose": "chose", "begin": "began", "bring": "brought",
    "buy": "bought", "think": "thought", "teach": "taught", "catch": "caught", "fight": "fought", "sell": "sold",
    "tell": "told", "find": "found", "sit": "sat", "stand": "stood", "make": "made", "walk": "walked",
    "jump": "jumped", "play": "played", "talk": "talked", "cook": "cooked", "dance": "danced", "open": "opened",
    "help": "helped", "call": "called", "laugh": "laughed", "sleep": "slept", "keep": "kept", "feel": "felt",
    "leave": "left", "meet": "met", "pay": "paid", "read": "read", "win": "won", "lose": "lost", "hold": "held",
}  # fmt: skip
BABIES = {
    "cat": "kitten", "dog": "puppy", "cow": "calf", "horse": "foal", "sheep": "lamb", "goat": "kid", "pig": "piglet",
    "duck": "duckling", "goose": "gosling", "frog": "tadpole", "kangaroo": "joey", "bear": "cub", "lion": "cub",
    "deer": "fawn", "swan": "cygnet", "owl": "owlet", "hen": "chick", "whale": "calf", "seal": "pup", "fox": "kit",
}  # fmt: skip
COLORS = {
    "banana": "yellow", "lemon": "yellow", "grass": "green", "snow": "white", "coal": "black", "sky": "blue",
    "strawberry": "red", "tomato": "red", "carrot": "orange", "pumpkin": "orange", "lime": "green",
    "milk": "white", "blood": "red", "chocolate": "brown", "cherry": "red", "ocean": "blue", "leaf": "green",
    "sunflower": "yellow", "crow": "black", "flamingo": "pink",
}  # fmt: skip
LEGS = {
    "spider": 8, "dog": 4, "cat": 4, "bird": 2, "ant": 6, "cow": 4, "chicken": 2, "horse": 4, "bee": 6,
    "octopus": 8, "human": 2, "beetle": 6, "duck": 2, "elephant": 4, "fly": 6, "crab": 10, "snake": 0, "fish": 0,
}  # fmt: skip
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark", "old": "new",
    "open": "closed", "early": "late", "hard": "soft", "high": "low", "full": "empty", "rich": "poor",
    "wet": "dry", "strong": "weak", "left": "right", "day": "night", "win": "lose", "love": "hate",
    "true": "false", "long": "short", "clean": "dirty", "loud": "quiet", "thick": "thin", "inside": "outside",
    "young": "old", "good": "bad", "black": "white", "north": "south", "east": "west", "push": "pull",
    "give": "take", "buy": "sell", "begin": "end", "heavy": "light", "sweet": "sour", "brave": "afraid",
    "always": "never", "above": "below", "first": "last", "friend": "enemy", "question": "answer", "cheap": "expensive",
}  # fmt: skip
SYMBOLS = {
    "iron": "Fe", "gold": "Au", "silver": "Ag", "oxygen": "O", "hydrogen": "H", "carbon": "C", "sodium": "Na",
    "helium": "He", "copper": "Cu", "lead": "Pb", "nitrogen": "N", "calcium": "Ca", "potassium": "K",
    "zinc": "Zn", "tin": "Sn", "mercury": "Hg", "neon": "Ne", "sulfur": "S", "chlorine": "Cl", "uranium": "U",
    "magnesium": "Mg", "aluminum": "Al", "silicon": "Si", "phosphorus": "P", "fluorine": "F", "argon": "Ar",
    "nickel": "Ni", "cobalt": "Co", "platinum": "Pt", "iodine": "I", "lithium": "Li", "titanium": "Ti",
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


@dataclass(frozen=True)
class Task:
    """A task: ``subject(rng)`` draws what is asked (the slots of a phrasing) and its truth; ``forms`` are the
    phrasings of the shipped splits, ``extra`` more phrasings for training only, ``heldout`` phrasings used by
    nothing but the held-out-phrasing split (someone else asking the same things)."""

    subject: Callable[[random.Random], tuple[tuple, str]]
    weight: float
    forms: tuple[str, ...]
    extra: tuple[str, ...] = ()
    heldout: tuple[str, ...] = ()

    def ask(self, rng: random.Random, forms: tuple[str, ...]) -> tuple[str, str]:
        slots, truth = self.subject(rng)
        form = rng.choice(forms) if len(forms) > 1 else forms[0]  # one form draws nothing (the shipped splits)
        return form.format(*slots), truth


def _table(table: dict) -> Callable[[random.Random], tuple[tuple, str]]:
    def subject(r: random.Random) -> tuple[tuple, str]:
        w, a = _ask(r, table)
        return (w,), str(a)

    return subject


def _continent(r):
    c, (_, a) = _ask(r, COUNTRIES)
    return (c,), a


def _day(r):
    i = r.randrange(7)
    return (DAYS[i],), DAYS[(i + 1) % 7]


def _month(r):
    i = r.randrange(12)
    return (MONTHS[i],), MONTHS[(i + 1) % 12]


def _units(r):
    small, big, n = r.choice(UNITS)
    return (small, big), str(n)


def _add(r):
    a, b = r.randint(1, 10 ** r.randint(1, 3)), r.randint(1, 10 ** r.randint(1, 3))
    return (a, b), str(a + b)


def _times(r):
    a, b = r.randint(2, 12), r.randint(2, 12)
    return (a, b), str(a * b)


def _half(r):
    n = 2 * r.randint(1, 100)
    return (n,), str(n // 2)


def _squared(r):
    n = r.randint(1, 15)
    return (n,), str(n * n)


def _count(r):
    a = r.randint(1, 10)
    b = a + r.randint(2, 12)
    return (a, b), ", ".join(str(i) for i in range(a, b + 1))


def _sort(r):
    xs = r.sample(range(1, 100), r.randint(3, 6))
    return (", ".join(map(str, xs)),), ", ".join(map(str, sorted(xs)))


def _upper(r):
    w = _words(r, 1, 5)
    return (w,), w.upper()


def _repeat(r):
    w = _words(r, 2, 8)
    return (w,), w


def _larger(r):
    a, b = r.sample(range(1, 1000), 2)
    return (a, b), str(max(a, b))


# About two thirds are facts SmolLM2 answers in a steady template ("The capital of Peru is Lima."), which a student
# can learn; a third are tasks it answers erratically and at length (sums, sorting, repetition), which a student
# cannot: the traffic a cascade sends on. The weights are the shares of the draw.
TASKS: dict[str, Task] = {
    "capital": Task(
        _table(CAPITALS), 12,
        ("What is the capital of {}?", "What is the capital city of {}?", "Name the capital of {}."),
        ("Which city is the capital of {}?", "What's the capital of {}?", "Tell me the capital of {}.",
         "What city is the capital of {}?", "Give the capital of {}."),
        ("Do you know the capital of {}?", "Capital of {}?", "Which city serves as the capital of {}?"),
    ),
    "continent": Task(
        _continent, 10,
        ("Which continent is {} in?", "On which continent is {}?", "What continent is {} part of?"),
        ("What continent is {} on?", "Which continent does {} belong to?", "Name the continent of {}.",
         "In which continent is {}?", "Tell me which continent {} is in."),
        ("Where is {}, on which continent?", "{} is located on which continent?", "Which continent has {}?"),
    ),
    "plural": Task(
        _table(PLURALS), 8,
        ("What is the plural of {}?", "What is the plural form of {}?", "Give the plural of {}."),
        ("What's the plural of {}?", "Write the plural of {}.", "How do you say {} in the plural?",
         "Tell me the plural of {}.", "What is the plural of the word {}?"),
        ("Plural of {}?", "More than one {} is called what?", "If there are two, what is the plural of {}?"),
    ),
    "past": Task(
        _table(PAST), 8,
        ("What is the past tense of {}?", "What is the past tense of the verb {}?", "Give the past tense of {}."),
        ("What's the past tense of {}?", "Write the past tense of {}.", "Tell me the past tense of {}.",
         "What is the simple past of {}?", "Name the past tense of {}."),
        ("Past tense of {}?", "Yesterday I ... ({}): what is the past form?", "How do you say {} in the past tense?"),
    ),
    "opposite": Task(
        _table(OPPOSITES), 7,
        ("What is the opposite of {}?", "What is the antonym of {}?", "Give the opposite of {}."),
        ("What's the opposite of {}?", "Tell me the opposite of {}.", "Name the opposite of {}.",
         "What word means the opposite of {}?", "Give an antonym of {}."),
        ("Opposite of {}?", "What is a word that means the reverse of {}?", "Which word is the antonym of {}?"),
    ),
    "symbol": Task(
        _table(SYMBOLS), 5,
        ("What is the chemical symbol for {}?", "What is the chemical symbol of {}?", "Give the chemical symbol for {}."),
        ("What's the chemical symbol for {}?", "Tell me the chemical symbol of {}.", "Name the chemical symbol for {}.",
         "Which symbol stands for {}?", "Write the element symbol for {}."),
        ("Symbol of the element {}?", "How is {} written in the periodic table?", "Which chemical symbol does {} have?"),
    ),
    "baby": Task(
        _table(BABIES), 3,
        ("What is a baby {} called?", "What do you call a baby {}?", "What is the name for a young {}?"),
        ("What's a baby {} called?", "Name a baby {}.", "What is a young {} called?", "Tell me what a baby {} is called."),
        ("A baby {} is known as what?", "What word is used for a baby {}?"),
    ),
    "color": Task(
        _table(COLORS), 3,
        ("What color is a {}?", "What is the color of a {}?", "What color does a {} have?"),
        ("What colour is a {}?", "Which color is a {}?", "Tell me the color of a {}.", "Name the color of a {}."),
        ("A {} is usually what color?", "Which colour does a {} usually have?"),
    ),
    "legs": Task(
        _table(LEGS), 3,
        ("How many legs does a {} have?", "How many legs has a {}?", "A {} has how many legs?"),
        ("What is the number of legs of a {}?", "Count the legs of a {}.", "How many legs do {}s have?"),
        ("Number of legs on a {}?", "Tell me how many legs a {} walks on."),
    ),
    "day": Task(
        _day, 1, ("What day comes after {}?",),
        ("Which day comes after {}?", "What is the day after {}?", "Name the day after {}."),
        ("If today is {}, what day is tomorrow?",),
    ),
    "month": Task(
        _month, 2, ("What month comes after {}?",),
        ("Which month comes after {}?", "What is the month after {}?", "Name the month after {}."),
        ("If this month is {}, what is next month?",),
    ),
    "units": Task(
        _units, 2, ("How many {} are in a {}?",),
        ("How many {} make a {}?", "How many {} are there in one {}?", "One {1} is how many {0}?"),
        ("Convert one {1} into {0}.",),
    ),
    "add": Task(
        _add, 6, ("What is {} + {}?",),
        ("What is {} plus {}?", "Calculate {} + {}.", "What does {} + {} equal?", "Add {} and {}."),
        ("Work out {} + {}.", "How much is {} plus {}?"),
    ),
    "larger": Task(
        _larger, 6, ("Which is larger, {} or {}?",),
        ("Which is bigger, {} or {}?", "Which number is larger: {} or {}?", "Is {} or {} larger?"),
        ("Of {} and {}, which is the larger number?",),
    ),
    "sort": Task(
        _sort, 5, ("Sort these numbers from smallest to largest: {}.",),
        ("Put these numbers in ascending order: {}.", "Order from smallest to largest: {}.",
         "Sort in increasing order: {}."),
        ("Arrange from low to high: {}.",),
    ),
    "repeat": Task(
        _repeat, 5, ("Repeat after me: {}",),
        ("Say this back to me: {}", "Repeat exactly: {}", "Please repeat: {}"),
        ("Echo these words: {}",),
    ),
    "upper": Task(
        _upper, 5, ("Make this uppercase: {}",),
        ("Convert to uppercase: {}", "Write this in capital letters: {}", "Uppercase this: {}"),
        ("Turn this into all caps: {}",),
    ),
    "count": Task(
        _count, 3, ("Count from {} to {}.",),
        ("Count up from {} to {}.", "List the numbers from {} to {}.", "Please count from {} to {}."),
        ("Write every number from {} through {}.",),
    ),
    "half": Task(
        _half, 3, ("What is half of {}?",),
        ("What is {} divided by 2?", "Half of {} is what?", "Calculate half of {}."),
        ("If you split {} into two equal parts, how much is each?",),
    ),
    "times": Task(
        _times, 3, ("What is {} times {}?",),
        ("What is {} multiplied by {}?", "Calculate {} times {}.", "What is {} x {}?"),
        ("What do you get when you multiply {} by {}?",),
    ),
    "squared": Task(
        _squared, 1, ("What is {} squared?",),
        ("What is the square of {}?", "Calculate {} squared.", "What is {} to the power of 2?"),
        ("Multiply {} by itself: what is the result?",),
    ),
}  # fmt: skip
SPLITS = {"train": 2400, "val": 300, "test": 400}
HELDOUT = 300  # the held-out-phrasing split
SEED = 2024


PHRASINGS = ("shipped", "training", "heldout")


def _forms(task: Task, phrasing: str) -> tuple[str, ...]:
    if phrasing == "shipped":
        return task.forms
    if phrasing == "training":
        return task.forms + task.extra
    if phrasing == "heldout":
        return task.heldout
    raise ValueError(f"phrasing must be one of {PHRASINGS}")


def draw(rng: random.Random, phrasing: str = "shipped") -> Question:
    names = sorted(TASKS)
    name = rng.choices(names, weights=[TASKS[n].weight for n in names])[0]
    prompt, truth = TASKS[name].ask(rng, _forms(TASKS[name], phrasing))
    return Question(name, prompt + (SHORT if rng.random() < 0.5 else ""), truth)


def family(
    n: int, seed: int = SEED, phrasing: str = "shipped", exclude: frozenset[str] = frozenset()
) -> list[Question]:
    """``n`` distinct questions from one seeded draw (the small tables run out of distinct prompts, so
    fact tasks are a smaller share than their template weight), none of them in ``exclude``."""
    rng, seen, out = random.Random(seed), set(exclude), []
    for _ in range(n * 50):
        q = draw(rng, phrasing)
        if q.prompt not in seen:
            seen.add(q.prompt)
            out.append(q)
            if len(out) == n:
                return out
    raise ValueError(f"the family has fewer than {n} distinct prompts")


def split(name: str, seed: int = SEED) -> list[Question]:
    """A disjoint split of the family: ``train``, ``val`` (calibration, early stopping) or ``test`` (the shipped
    phrasings), or ``heldout`` (the same kinds of questions in phrasings nothing trains or tunes on)."""
    if name == "heldout":
        return family(HELDOUT, seed + 7, "heldout")
    if name not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS) + ['heldout']}")
    qs = family(sum(SPLITS.values()), seed)
    random.Random(seed + 1).shuffle(qs)
    start = 0
    for s, n in SPLITS.items():
        if s == name:
            return qs[start : start + n]
        start += n
    raise AssertionError


def training_pool(n: int, seed: int = SEED + 100) -> list[Question]:
    """``n`` training questions in the shipped and the training-only phrasings, none of them a prompt of the
    validation, test or held-out split (the student's distillation set: ``serving/smol_pair/teacher.py``)."""
    kept_out = frozenset(q.prompt for name in ("val", "test", "heldout") for q in split(name))
    return family(n, seed, "training", kept_out)


def correct(answer: str, truth: str) -> bool:
    """The ground truth appears in the answer as whole words (case-insensitive)."""
    return re.search(rf"(?<!\w){re.escape(truth.lower())}(?!\w)", answer.lower()) is not None
