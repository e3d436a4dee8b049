"""Confidence scores from the weak answer's per-token log-probs (Gupta et al., 2024).

A score is a confidence: higher = surer. The cascade defers when ``score < threshold``.

- ``chow_sum``: sum of token log-probs = log-probability of the whole answer. Penalises length.
- ``chow_average``: mean token log-prob (length-normalised).
- ``chow_quantile``: the alpha-quantile of the token log-probs; alpha = 0 is the least likely token
  (the weakest link of the answer), alpha = 0.5 the median.

An answer with no tokens has log-probability 0 under every rule (nothing uncertain was said).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

Score = Callable[[Sequence[float]], float]
POST_HOC_RULES = ("post_hoc_quantile", "post_hoc_embed")


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


@dataclass
class Scorer:
    """A rule ready to score one answer: ``scorer(logprobs, embedding) -> confidence``."""

    rule: str
    fn: Callable[[Sequence[float], Optional[Sequence[float]]], float]
    needs_embedding: bool = False

    def __call__(self, logprobs: Sequence[float], embedding: Optional[Sequence[float]] = None) -> float:
        return self.fn(logprobs, embedding)


def build_scorer(rule: str, alpha: float = 0.0, model: Optional[dict[str, Any]] = None) -> Scorer:
    """A Chow rule by name, or a post-hoc rule from its fitted model (a calibration artifact's ``model``)."""
    if rule in POST_HOC_RULES:
        from serving.deferral.posthoc import PostHocModel

        if model is None:
            raise ValueError(f"rule {rule!r} needs a fitted model: point deferral.artifact at a calibration artifact")
        m = PostHocModel.from_dict(model)
        if ("post_hoc_" + m.kind) != rule:
            raise ValueError(f"artifact holds a post_hoc_{m.kind} model, not {rule}")
        return Scorer(rule, m.score, m.needs_embedding)
    if rule not in RULES:
        raise ValueError(f"unknown deferral rule {rule!r}; valid rules: {sorted(RULES) + list(POST_HOC_RULES)}")
    fn = make_rule(rule, alpha)
    return Scorer(rule, lambda lp, emb=None: fn(lp))


def should_defer(score: float, threshold: float) -> bool:
    """Defer when the confidence is below the threshold (NaN scores always defer)."""
    return not score >= threshold
