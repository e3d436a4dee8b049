"""Load-aware deferral: watermarks on the next tier's load -> the effective threshold at a boundary.

Pure logic (no Ray): the walk feeds it the requests it has in flight at the next tier whenever it
needs the boundary's threshold. A score is a confidence (higher = surer) and a request defers when
score < threshold, so "fewer defer" means the threshold moves *down*, toward ``floor``.

Hysteresis: shedding starts when the load reaches the high watermark and stops only when it has
fallen to the low watermark; between the two the governor keeps its state. While shedding, the
governor's level rises from 0 to 1 over ``ramp_s`` seconds; otherwise it falls back at the same rate.
The effective threshold is ``base - level * (base - floor)``: ``base`` (the configured threshold or the
budget controller's) at level 0, ``floor`` at level 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Watermarks:
    """The governor's parameters (config ``deferral.load_aware`` has the same fields)."""

    high_watermark: int
    low_watermark: int
    floor: float
    ramp_s: float


class LoadGovernor:
    def __init__(self, cfg: Watermarks, clock: Callable[[], float] = time.monotonic):
        self.cfg, self.clock = cfg, clock
        self.shedding = False
        self.level = 0.0  # 0: the base threshold; 1: the floor
        self._t = clock()

    def update(self, load: int) -> float:
        """Advances the level to now (at the state in force since the last update), then applies the
        hysteresis to ``load``. Returns the level."""
        now = self.clock()
        dt, self._t = max(now - self._t, 0.0), now
        self._move(dt)
        if load >= self.cfg.high_watermark:
            self.shedding = True
        elif load <= self.cfg.low_watermark:
            self.shedding = False
        if self.cfg.ramp_s == 0:
            self.level = 1.0 if self.shedding else 0.0
        return self.level

    def _move(self, dt: float) -> None:
        step = 1.0 if self.cfg.ramp_s == 0 else dt / self.cfg.ramp_s
        self.level = min(1.0, self.level + step) if self.shedding else max(0.0, self.level - step)

    def threshold(self, base: float, load: int) -> float:
        """The effective threshold for a request decided now, given the next tier's load. A base already
        at or below the floor is left alone (the governor only ever lowers the threshold)."""
        level = self.update(load)
        if base <= self.cfg.floor:
            return base
        return base - level * (base - self.cfg.floor)
