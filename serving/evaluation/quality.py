"""Correctness metrics between a model's answer and a reference (1.0 = correct)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable

from serving.tasks.short_answers import correct as truth_in_answer

_PUNCT = str.maketrans("", "", string.punctuation)
_NUM = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?")


def normalize(text: str) -> str:
    """Lower case, strip punctuation and articles, collapse whitespace (SQuAD-style)."""
    text = text.lower().translate(_PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def _first_number(text: str):
    m = _NUM.search(text)
    return float(m.group().replace(",", "")) if m else None


def numeric_match(pred: str, ref: str) -> float:
    """The first number in each text is equal (``5,198.`` matches ``5198``)."""
    a, b = _first_number(pred), _first_number(ref)
    return float(a is not None and b is not None and abs(a - b) < 1e-9)


def contains(pred: str, ref: str) -> float:
    return float(normalize(ref) in normalize(pred))


def token_f1(pred: str, ref: str) -> float:
    p, r = normalize(pred).split(), normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


QUALITY_METRICS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "contains": contains,
    "token_f1": token_f1,
}


def correct(pred: str, truth: str) -> float:
    """The ground truth appears in the answer as whole words (case-insensitive): "The capital of Peru is
    Lima." is correct for "Lima"."""
    return float(truth_in_answer(pred, truth))


# Metrics against a row's ground truth (its ``truth`` field) rather than a reference answer: offline only
# (calibration, benchmarks), where labelled rows carry the truth; shadow traffic has only the next tier's answer.
TRUTH_METRICS: dict[str, Callable[[str, str], float]] = {"correct": correct}
OFFLINE_METRICS = sorted(QUALITY_METRICS) + sorted(TRUTH_METRICS)


def get_metric(name: str) -> Callable[[str, str], float]:
    if name not in QUALITY_METRICS:
        raise ValueError(f"unknown metric {name!r}; valid metrics: {sorted(QUALITY_METRICS)}")
    return QUALITY_METRICS[name]


def offline_metric(name: str) -> tuple[Callable[[str, str], float], str]:
    """The metric and the row field it compares an answer with: ``reference`` (the reference answer, e.g.
    the strong model's) or ``truth`` (the ground truth, for ``correct``)."""
    if name in TRUTH_METRICS:
        return TRUTH_METRICS[name], "truth"
    if name in QUALITY_METRICS:
        return QUALITY_METRICS[name], "reference"
    raise ValueError(f"unknown metric {name!r}; valid metrics: {OFFLINE_METRICS}")
