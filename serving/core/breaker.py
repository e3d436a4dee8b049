"""Pure helpers for the router's failure handling (no Ray, no gRPC): a per-tier circuit breaker
and a window of recent outcomes."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Optional


class CircuitBreaker:
    """Closed: calls go through. After ``failures`` consecutive failures it opens: calls fail fast
    (the router degrades or refuses at once instead of waiting out a tier timeout on every
    request). After ``cooldown_s`` one probe call is let through (half-open); its success closes
    the breaker, its failure opens it for another cooldown."""

    def __init__(self, failures: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic):
        self.threshold, self.cooldown_s, self.clock = failures, cooldown_s, clock
        self.consecutive = 0
        self.opened_at: Optional[float] = None
        self.probing = False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.probing or self.clock() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        """May a call go to the tier now? (In half-open state, only the first caller probes.)"""
        if self.opened_at is None:
            return True
        if not self.probing and self.clock() - self.opened_at >= self.cooldown_s:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        self.consecutive, self.opened_at, self.probing = 0, None, False

    def release(self) -> None:
        """The call ended without saying anything about the tier's health (the caller gave up, or the
        tier only pushed back): a half-open probe slot is freed so that the next call probes again."""
        self.probing = False

    def failure(self) -> None:
        self.consecutive += 1
        if self.probing or self.consecutive >= self.threshold:
            self.opened_at, self.probing = self.clock(), False

    def retry_in_s(self) -> float:
        """Seconds until the next probe may go through (0 when closed)."""
        if self.opened_at is None:
            return 0.0
        return max(self.cooldown_s - (self.clock() - self.opened_at), 0.0)


class RecentShare:
    """Share of True among the last ``window`` outcomes (e.g. deferred or not)."""

    def __init__(self, window: int = 200):
        self.items: deque[bool] = deque(maxlen=window)

    def add(self, value: bool) -> None:
        self.items.append(bool(value))

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def share(self) -> Optional[float]:
        return sum(self.items) / len(self.items) if self.items else None
