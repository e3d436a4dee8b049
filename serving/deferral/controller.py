"""Budget controller: hold the realised deferral share near a target under a shifting query mix.

A fixed threshold defers a share that depends on the query mix (easy traffic: almost nothing; hard
traffic: almost everything). The controller instead keeps the last ``window`` scores and uses their
``target``-quantile as the threshold, so about ``target`` of recent requests fall below it. Until
``warmup`` scores are seen it uses the configured (calibrated) threshold.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class BudgetController:
    def __init__(self, target: float, initial_threshold: float, window: int = 500, warmup: int = 50):
        if not 0.0 < target < 1.0:
            raise ValueError(f"target deferral share must be in (0, 1), got {target}")
        self.target, self.initial = target, initial_threshold
        self.warmup = warmup
        self.scores: deque[float] = deque(maxlen=window)

    def threshold(self) -> float:
        if len(self.scores) < self.warmup:
            return self.initial
        return float(np.quantile(np.fromiter(self.scores, float), self.target))

    def decide(self, score: float) -> tuple[bool, float]:
        """(defer?, threshold used) for one score, then remember the score."""
        t = self.threshold()
        self.record(score)
        return (not score >= t), t

    def record(self, score: float) -> None:
        """Remember a score decided against ``threshold()`` elsewhere (the cascade's incremental
        decisions: an early DEFER records the score of the prefix it decided on, which lies below the
        threshold like the whole answer's would)."""
        self.scores.append(score)
