"""A judge's math: the prompts a judge model reads, how its verdict-token log-probs become a score, and the
window of token-level scores inside which the judge is asked. Pure code: no Ray, no torch, no config.

**Pointwise** (the simple baseline): one prompt per request, "is this answer correct? Yes or No"; the score
is P(Yes) / (P(Yes) + P(No)) read from the log-probs of the two verdict tokens at the first answer position
(one prefill, no decoding).

**Meta Ranking** (Liu et al., 2024, *Enabling Weak LLMs to Judge Response Reliability via Meta Ranking*):
the target (question, answer) is compared with each of N reference (question, answer) pairs whose
correctness is known ("which of the two answers is more likely correct? 1 or 2"), one prefill per
comparison, batched across the N references. With ``p_i`` the judge's probability that the target is the
more reliable of the pair (P(target's slot) / (P(1) + P(2))), the comparisons are aggregated by the paper's
voting rule, kept soft: beating a *correct* reference is a vote for the target (weight ``p_i``), losing to an
*incorrect* reference is a vote against it (weight ``1 - p_i``); the other two outcomes say nothing::

    score = ( sum_{i correct} p_i  -  sum_{i incorrect} (1 - p_i) ) / N        in [-1, 1]

Position bias (a small judge prefers one slot whatever the content) is handled by alternating the target's
slot across the references (first for even i, second for odd i), so each request's N comparisons see both
orders at no extra cost; ``both_orders`` asks each comparison in both orders and averages (2N prefills).

**Window** (Xia & Bouganis, 2023, *Window-Based Early-Exit Cascades*): with q the share of validation scores
below the token-level threshold, the judge sees only requests whose token score lies in
[Quantile(q - w), Quantile(q + w)]; outside it the token-level verdict stands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

METHODS = ("meta_ranking", "pointwise")
POINTWISE_VERDICTS = ("Yes", "No")
PAIR_VERDICTS = ("1", "2")
SYSTEM = "You are a strict grader of short answers."


@dataclass(frozen=True)
class Reference:
    """A labelled (question, answer) pair: ``correct`` is whether the answer was good."""

    question: str
    answer: str
    correct: bool

    def as_dict(self) -> dict:
        return {"question": self.question, "answer": self.answer, "correct": self.correct}

    @classmethod
    def of(cls, d: dict) -> Reference:
        return cls(str(d["question"]), str(d["answer"]), bool(d["correct"]))


@dataclass(frozen=True)
class Comparison:
    """One judge prompt (chat messages) and how to read it: ``target_slot`` is the verdict index (0 or 1)
    that says the target is the better answer; ``reference`` the index of the reference (-1: pointwise)."""

    messages: list
    target_slot: int
    reference: int = -1


def _messages(user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def pointwise_prompt(question: str, answer: str) -> Comparison:
    user = f"Question: {question}\nAnswer: {answer}\n\nIs the answer correct? Reply Yes or No."
    return Comparison(_messages(user), 0)


def pair_prompt(first: tuple[str, str], second: tuple[str, str]) -> list[dict[str, str]]:
    user = (
        "Which answer is more likely correct?\n\n"
        f"Question 1: {first[0]}\nAnswer 1: {first[1]}\n\n"
        f"Question 2: {second[0]}\nAnswer 2: {second[1]}\n\n"
        "Reply 1 or 2."
    )
    return _messages(user)


def meta_ranking_prompts(
    question: str, answer: str, references: Sequence[Reference], both_orders: bool = False
) -> list[Comparison]:
    """The comparisons of one request, in order: reference i with the target first for even i and second for
    odd i (or, with ``both_orders``, each reference in both orders, target first then second)."""
    target = (question, answer)
    out = []
    for i, ref in enumerate(references):
        other = (ref.question, ref.answer)
        orders = (0, 1) if both_orders else (i % 2,)
        for slot in orders:
            pair = (target, other) if slot == 0 else (other, target)
            out.append(Comparison(pair_prompt(*pair), slot, i))
    return out


def prompts(
    method: str, question: str, answer: str, references: Sequence[Reference] = (), both_orders: bool = False
) -> list[Comparison]:
    if method == "pointwise":
        return [pointwise_prompt(question, answer)]
    if method == "meta_ranking":
        if not references:
            raise ValueError("meta_ranking needs at least one reference")
        return meta_ranking_prompts(question, answer, references, both_orders)
    raise ValueError(f"unknown judge method {method!r}; valid: {list(METHODS)}")


def verdicts(method: str) -> tuple[str, str]:
    return POINTWISE_VERDICTS if method == "pointwise" else PAIR_VERDICTS


def preference(logprobs: Sequence[float], slot: int) -> float:
    """P(verdict ``slot``) renormalised over the two verdict tokens, from their log-probs (a NaN or a pair of
    -inf log-probs gives 0.5: no preference)."""
    a, b = float(logprobs[0]), float(logprobs[1])
    if math.isnan(a) or math.isnan(b) or (math.isinf(a) and math.isinf(b)):
        return 0.5
    mine, other = (a, b) if slot == 0 else (b, a)
    return 1.0 / (1.0 + math.exp(other - mine))  # = e^mine / (e^mine + e^other), stable


def meta_ranking_score(wins: Sequence[float], correct: Sequence[bool]) -> float:
    """The paper's voting, soft: ``wins[i]`` = P(target more reliable than reference i) in [0, 1]."""
    if len(wins) != len(correct) or not wins:
        raise ValueError("one win probability per reference, at least one")
    votes = sum(p if ok else -(1.0 - p) for p, ok in zip(wins, correct))
    return votes / len(wins)


def aggregate(
    method: str, comparisons: Sequence[Comparison], logprobs: Sequence[Sequence[float]], references=()
) -> float:
    """The judge's score from each comparison's two verdict log-probs (higher = the answer is more likely
    good). Pointwise: P(Yes). Meta Ranking: :func:`meta_ranking_score`, a reference asked in both orders
    counting once with its two preferences averaged."""
    if len(comparisons) != len(logprobs):
        raise ValueError("one pair of verdict log-probs per comparison")
    if method == "pointwise":
        return preference(logprobs[0], comparisons[0].target_slot)
    per_ref: dict[int, list[float]] = {}
    for c, lp in zip(comparisons, logprobs):
        per_ref.setdefault(c.reference, []).append(preference(lp, c.target_slot))
    order = sorted(per_ref)
    wins = [sum(per_ref[i]) / len(per_ref[i]) for i in order]
    return meta_ranking_score(wins, [references[i].correct for i in order])


# ---- the window ------------------------------------------------------------------------------------
def quantile(sorted_scores: Sequence[float], q: float) -> float:
    """The q-quantile of sorted scores (linear interpolation; q clipped to [0, 1])."""
    n = len(sorted_scores)
    if n == 0:
        raise ValueError("no scores")
    pos = min(max(q, 0.0), 1.0) * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    return float(sorted_scores[lo] + (sorted_scores[hi] - sorted_scores[lo]) * (pos - lo))


def threshold_quantile(sorted_scores: Sequence[float], threshold: float) -> float:
    """q: the share of the scores below the threshold (the deferral share it gives on them)."""
    if len(sorted_scores) == 0:
        raise ValueError("no scores")
    return sum(1 for s in sorted_scores if s < threshold) / len(sorted_scores)


def window_bounds(sorted_scores: Sequence[float], threshold: float, w: float) -> tuple[float, float]:
    """[Quantile(q - w), Quantile(q + w)] with q the threshold's quantile; the edges open up to -inf / +inf
    where q - w < 0 or q + w > 1 (every score on that side is judged)."""
    if not 0.0 <= w <= 0.5:
        raise ValueError(f"window must be in [0, 0.5], got {w}")
    q = threshold_quantile(sorted_scores, threshold)
    lo = -math.inf if q - w <= 0 else quantile(sorted_scores, q - w)
    hi = math.inf if q + w >= 1 else quantile(sorted_scores, q + w)
    return min(lo, threshold), max(hi, threshold)


@dataclass(frozen=True)
class Window:
    """Token-level scores in [low, high] are judged; below ``low`` the rule defers, above ``high`` it accepts."""

    low: float = -math.inf
    high: float = math.inf

    def inside(self, score: Optional[float]) -> bool:
        return score is not None and not math.isnan(score) and self.low <= score <= self.high
