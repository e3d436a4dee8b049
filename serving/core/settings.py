"""A boundary's settings as the walk takes them: typed, resolved once from the config and its calibration
artifact (``serving.config``'s ``Deferral.resolved()`` and ``Deferral.judge_settings()``). No config import."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass(frozen=True)
class RuleSettings:
    """A boundary's rule: as configured, or as its calibration artifact fitted it."""

    rule: str
    alpha: float
    threshold: Optional[float]
    model: Optional[dict[str, Any]] = None  # a post-hoc rule's fitted model


@dataclass(frozen=True)
class JudgeSettings:
    """A boundary's judge (``deferral.judge``, config over artifact): how it judges, its labelled references
    (meta_ranking), the window of token-level scores it is asked about and its threshold."""

    method: str
    both_orders: bool
    low: float
    high: float
    threshold: float
    references: list[dict[str, Any]] = field(default_factory=list)
