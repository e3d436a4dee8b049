"""Confidence scores from the weak answer's per-token log-probs (Gupta et al., 2024).

A score is a confidence: higher = surer. The cascade defers when ``score < threshold``.

- ``chow_sum``: sum of token log-probs = log-probability of the whole answer. Penalises length.
- ``chow_average``: mean token log-prob (length-normalised).
- ``chow_quantile``: the alpha-quantile of the token log-probs; alpha = 0 is the least likely token
  (the weakest link of the answer), alpha = 0.5 the median.

An answer with no tokens has log-probability 0 under every rule (nothing uncertain was said).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

Score = Callable[[Sequence[float]], float]


def chow_sum(logprobs: Sequence[float]) -> float:
    return float(np.sum(logprobs)) if len(logprobs) else 0.0


def chow_average(logprobs: Sequence[float]) -> float:
    return float(np.mean(logprobs)) if len(logprobs) else 0.0


def chow_quantile(logprobs: Sequence[float], alpha: float = 0.0) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(np.quantile(np.asarray(logprobs, dtype=np.float64), alpha)) if len(logprobs) else 0.0


RULES: dict[str, Callable[..., float]] = {
    "chow_sum": chow_sum,
    "chow_average": chow_average,
    "chow_quantile": chow_quantile,
}


def make_rule(name: str, alpha: float = 0.0) -> Score:
    """The scoring function for a rule name; unknown names list the valid ones."""
    if name not in RULES:
        raise ValueError(f"unknown deferral rule {name!r}; valid rules: {sorted(RULES)}")
    if name == "chow_quantile":
        chow_quantile([], alpha)  # validates alpha once, up front
        return lambda lp: chow_quantile(lp, alpha)
    return RULES[name]


def should_defer(score: float, threshold: float) -> bool:
    """Defer when the confidence is below the threshold (NaN scores always defer)."""
    return not score >= threshold
