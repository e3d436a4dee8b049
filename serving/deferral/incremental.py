"""Deciding as tokens arrive: every rule's incremental form, with a three-valued verdict.

Feed a tier's token log-probs to a :class:`Decision` as they arrive; after each push it says
DEFER (certain), ACCEPT (certain) or UNDECIDED.

- **Monotone rules** — ``chow_sum`` and ``chow_quantile`` with alpha 0 (the least likely token): log-probs
  are log-softmax values (<= 0), so the running score can only fall as tokens arrive. Once it drops
  below the threshold, DEFER is certain, and deciding then gives exactly the decision the rule would
  give on the whole answer (``exact``). They never ACCEPT early: a later token could still be unlikely.
- **Other rules** (average, alpha > 0 quantiles, post-hoc) are UNDECIDED until the answer ends.
- **A decision window** (``window=k``, config ``deferral.decide_within_tokens``): the rule is applied to
  the first k tokens (the whole answer when it is shorter) and decides there, ACCEPT or DEFER; a
  monotone rule still defers as soon as its running score on those k tokens falls below the
  threshold. This is a different rule from the full-answer one (post-hoc rules must be fitted on
  prefix features: ``cascade calibrate --decide-within-tokens k``); its quality cost is measured by
  ``benchmarks/quality.py`` (rows ``<rule>@k``).

Pure code: no Ray, no torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from serving.deferral.rules import Scorer, should_defer


class Verdict(str, Enum):
    DEFER = "defer"
    ACCEPT = "accept"
    UNDECIDED = "undecided"


def is_monotone(rule: str, alpha: float = 0.0) -> bool:
    """Rules whose running score never rises as tokens arrive (so an early DEFER is exact)."""
    return rule == "chow_sum" or (rule == "chow_quantile" and alpha == 0.0)


class Decision:
    """One answer's running decision at one tier boundary.

    ``early``: let a monotone rule defer as soon as it is certain (off: decide only at the end or at
    the window). ``threshold`` may change between pushes (the budget controller's moves)."""

    def __init__(self, scorer: Scorer, rule: str, alpha: float = 0.0, window: Optional[int] = None, early: bool = True):
        if window is not None and window < 1:
            raise ValueError(f"window must be at least 1 token, got {window}")
        self.scorer, self.window = scorer, window
        self.monotone = early and is_monotone(rule, alpha)
        self.sum = 0.0
        self.min = math.inf
        self.logprobs: list[float] = []
        self.verdict = Verdict.UNDECIDED
        self.decided_at: Optional[int] = None  # tokens read when the verdict was reached
        self.score: Optional[float] = None  # the score the verdict used

    @property
    def can_decide_early(self) -> bool:
        return self.monotone or self.window is not None

    @property
    def _running(self) -> float:
        return self.sum if self.scorer.rule == "chow_sum" else self.min

    def push(self, logprobs: Sequence[float], threshold: float, may_accept: bool = True) -> Verdict:
        """Feeds new tokens' log-probs; returns the verdict (a reached verdict never changes).
        ``may_accept=False``: only a certain DEFER is reached before the end (at the window the rule
        stays undecided unless it defers; the caller decides at the end against a threshold it sets then)."""
        if self.verdict is not Verdict.UNDECIDED:
            return self.verdict
        for lp in logprobs:
            if self.window is not None and len(self.logprobs) >= self.window:
                break
            self.logprobs.append(lp)
            if self.monotone:
                if math.isnan(lp):
                    self.sum = self.min = math.nan
                else:
                    self.sum += lp
                    self.min = min(self.min, lp)
                if should_defer(self._running, threshold):  # NaN defers, as the full rule does
                    return self._decide(Verdict.DEFER, self._running)
        if self.window is not None and len(self.logprobs) >= self.window:
            score = self.scorer(self.logprobs)
            if should_defer(score, threshold):
                return self._decide(Verdict.DEFER, score)
            if may_accept:
                return self._decide(Verdict.ACCEPT, score)
        return Verdict.UNDECIDED

    def finish(
        self, logprobs: Sequence[float], threshold: float, embedding: Optional[Sequence[float]] = None
    ) -> tuple[Verdict, float]:
        """The verdict once the answer is complete (the window's, if it was reached; else the rule on
        the whole answer, or on the window's prefix when the answer ended inside it)."""
        if self.verdict is not Verdict.UNDECIDED:
            return self.verdict, self.score
        lps = list(logprobs) if self.window is None else list(logprobs)[: self.window]
        score = self.scorer(lps, embedding)
        self._decide(Verdict.DEFER if should_defer(score, threshold) else Verdict.ACCEPT, score, len(lps))
        return self.verdict, score

    def _decide(self, verdict: Verdict, score: float, at: Optional[int] = None) -> Verdict:
        self.verdict, self.score = verdict, score
        self.decided_at = len(self.logprobs) if at is None else at
        return verdict


@dataclass
class StopRule:
    """A boundary's rule as plain data, sent with a tier call: the tier applies it next to its engine
    (``serving.core.decide``), stops a request the moment DEFER is certain and reports the verdict and
    the score in its last chunk. It is the only place the rule runs for a request.

    ``floor`` (load-aware deferral): the threshold may be lowered to this by the time the walk decides,
    so the tier stops early only below it and never accepts before the end; the walk compares the
    reported score with the threshold in force then. ``score_only``: the tier's answer goes to the
    client whatever its score (a forced tier): tokens are not held, the score is only reported."""

    rule: str
    alpha: float
    threshold: float
    window: Optional[int] = None
    early: bool = True
    model: Optional[dict] = None  # a post-hoc rule's fitted model
    floor: Optional[float] = None
    score_only: bool = False

    def decision(self) -> Decision:
        from serving.deferral.rules import build_scorer

        early = self.early and not self.score_only
        return Decision(
            build_scorer(self.rule, self.alpha, self.model),
            self.rule,
            self.alpha,
            None if self.score_only else self.window,
            early,
        )

    @property
    def holds(self) -> bool:
        """Whether the tier holds its tokens until the verdict (it may defer, so they may not be the answer)."""
        return not self.score_only

    @property
    def early_threshold(self) -> float:
        """The threshold an early verdict is reached at (certain whatever the walk decides later)."""
        return self.threshold if self.floor is None else min(self.threshold, self.floor)
