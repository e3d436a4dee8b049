"""Integer arithmetic questions phrased in English: ``What is 4821 + 377?`` -> ``5198``.

Operands have 1 to ``max_digits`` digits; the number of digits of each operand is drawn uniformly,
so short (easy) and long (hard, long carry chains) questions are equally common. This spread is what
makes a cascade worthwhile: a small model gets the short ones right and is unsure on the long ones.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

MAX_DIGITS = 5


@dataclass(frozen=True)
class Example:
    prompt: str
    reference: str


def _operand(rng: random.Random, max_digits: int, min_digits: int = 1) -> int:
    digits = rng.randint(min_digits, max_digits)
    if digits == 1:
        return rng.randint(0, 9)
    return rng.randint(10 ** (digits - 1), 10**digits - 1)


def make_example(rng: random.Random, max_digits: int = MAX_DIGITS, min_digits: int = 1) -> Example:
    a, b = _operand(rng, max_digits, min_digits), _operand(rng, max_digits, min_digits)
    return Example(prompt=f"What is {a} + {b}?", reference=str(a + b))


def examples(seed: int, n: int, max_digits: int = MAX_DIGITS, min_digits: int = 1) -> Iterator[Example]:
    """``n`` examples from a generator seeded with ``seed`` (same seed, same examples)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield make_example(rng, max_digits, min_digits)
