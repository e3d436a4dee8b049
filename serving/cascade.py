"""The cascade walk: tiers in order, each one's token stream, the deferral decision, the failure
policy. No Ray, no gRPC: it talks to a small tier-client protocol (the Serve client in
``serving/deployments/tier_client.py``; fakes in the unit tests) and yields events, so ``Generate``
and ``GenerateStream`` are thin adapters over the same walk.

Events, in order: :class:`Text` for answer text that is certain to be part of the answer (the last
tier's tokens as they arrive; an earlier tier's whole text once the rule accepts it), then one
:class:`Outcome`.
"""

from __future__ import annotations

import math
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Protocol, Union

from serving.config import CascadeConfig
from serving.deferral import build_scorer, should_defer
from serving.deferral.controller import BudgetController
from serving.models.base import Chunk, Generation, GenerationRequest


class BadRequest(ValueError):
    """A request the cascade refuses (INVALID_ARGUMENT); the message names the field."""


class TierFailure(Exception):
    """A tier could not answer; ``reason`` is one of timeout, replica_died, overloaded,
    unavailable, breaker_open, error."""

    def __init__(self, tier: str, reason: str, message: str):
        super().__init__(message)
        self.tier, self.reason = tier, reason


class TierClient(Protocol):
    """Calls one tier. ``stream`` yields the tier's chunks (the last carries ``final``); with
    ``tokens=False`` only that last chunk (one message instead of one per decoding step). It raises
    TierFailure when the tier cannot answer and BadRequest when it refuses the input. Closing the
    iterator early cancels the tier's work."""

    def stream(self, tier: str, req: GenerationRequest, tokens: bool = True) -> AsyncIterator[Chunk]: ...


class Recorder(Protocol):
    def inc(self, name: str, value: float = 1.0, **tags: str) -> None: ...
    def observe(self, name: str, value: float, **tags: str) -> None: ...


class NoMetrics:
    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        pass

    def observe(self, name: str, value: float, **tags: str) -> None:
        pass


@dataclass
class Plan:
    request: GenerationRequest
    tiers: list[str]  # tiers to try, in order
    forced: bool
    threshold: Optional[float]  # None: the budget controller decides
    include_logprobs: bool = False
    stream: bool = False  # the caller sends text as it comes (GenerateStream): the last tier streams tokens


@dataclass
class TierRun:
    """What one tier did for a request."""

    tier: str
    generation: Generation
    score: Optional[float]  # the rule's score, for a tier that may defer onward
    latency_ms: float       # wall time of the call as the walk saw it


@dataclass
class Text:
    tier: str
    text: str


@dataclass
class Outcome:
    answer: Generation
    answered_by: str
    deferred: bool
    score: float  # the first tier's confidence (NaN when it has none)
    threshold: float
    runs: list[TierRun] = field(default_factory=list)
    degraded: str = ""  # why the answer is an earlier tier's, when a later tier failed


Event = Union[Text, Outcome]


class Cascade:
    """The deferral policy over a list of tiers."""

    def __init__(self, config: CascadeConfig, client: TierClient, metrics: Recorder | None = None):
        self.cfg = config
        self.client = client
        self.metrics = metrics or NoMetrics()
        self.names = config.tier_names
        d = config.deferral
        rule = d.resolved()
        self.rule, self.threshold = rule["rule"], rule["threshold"]
        self.scorer = build_scorer(rule["rule"], rule["alpha"], rule["model"])
        self.controller = (BudgetController(d.target_deferral, self.threshold, d.controller_window, d.controller_warmup)
                           if d.target_deferral is not None else None)

    def _score(self, name: str, gen: Generation) -> Optional[float]:
        """The rule's score for a tier that may defer onward (every tier but the last)."""
        return self.scorer(gen.logprobs, gen.embedding) if name != self.names[-1] else None

    def _defer(self, plan: Plan, score: float) -> bool:
        """Applies the threshold (the request's, the configured one, or the budget controller's)."""
        if plan.threshold is None:
            defer, plan.threshold = self.controller.decide(score)
            return defer
        return should_defer(score, plan.threshold)

    async def walk(self, plan: Plan) -> AsyncIterator[Event]:
        """Runs the cascade for one request. Raises TierFailure when no tier can answer (or a failure
        cannot be degraded) and BadRequest when a tier refuses the input."""
        runs: list[TierRun] = []
        first_score = math.nan
        prev: Optional[TierRun] = None
        for k, name in enumerate(plan.tiers):
            final = plan.forced or k == len(plan.tiers) - 1
            t0 = time.perf_counter()
            gen: Optional[Generation] = None
            sent = False
            try:
                tokens = final and plan.stream  # per-token chunks only where someone reads them
                async with aclosing(self.client.stream(name, plan.request, tokens)) as chunks:  # closing cancels
                    async for chunk in chunks:
                        if final and chunk.text:  # the last tier answers whatever it says: stream it on
                            sent = True
                            yield Text(name, chunk.text)
                        if chunk.final is not None:
                            gen = chunk.final
                if gen is None:
                    raise TierFailure(name, "error", f"tier {name!r} ended its stream without an answer")
            except TierFailure as f:
                self.metrics.inc("cascade_tier_errors", tier=name, reason=f.reason)
                if prev is None or sent or self.cfg.reliability.on_tier_failure != "degrade":
                    raise
                self.metrics.inc("cascade_fallbacks", tier=name, reason=f.reason)
                yield Text(prev.tier, prev.generation.text)
                yield Outcome(prev.generation, prev.tier, True, first_score, self._threshold(plan), runs,
                              degraded=f"{f}; answered by {prev.tier!r}")
                return
            ms = (time.perf_counter() - t0) * 1e3
            self.metrics.observe("cascade_tier_latency_ms", ms, tier=name)
            self.metrics.inc("cascade_tier_tokens", gen.prompt_tokens, tier=name, kind="prompt")
            self.metrics.inc("cascade_tier_tokens", gen.completion_tokens, tier=name, kind="completion")
            score = self._score(name, gen)
            if k == 0 and score is not None:
                first_score = score
            run = TierRun(name, gen, score, ms)
            runs.append(run)
            if final or not self._defer(plan, score):
                if not final:
                    yield Text(name, gen.text)
                yield Outcome(gen, name, k > 0, first_score, self._threshold(plan), runs)
                return
            self.metrics.inc("cascade_deferrals", tier=name)
            prev = run
        raise AssertionError("unreachable: the last tier always answers")

    def _threshold(self, plan: Plan) -> float:
        return self.threshold if plan.threshold is None else plan.threshold

    async def run(self, plan: Plan) -> Outcome:
        """The walk collected: what unary calls use (the answer's text is ``outcome.answer.text``)."""
        async with aclosing(self.walk(plan)) as events:
            async for ev in events:
                if isinstance(ev, Outcome):
                    return ev
        raise AssertionError("unreachable: the walk always ends with an Outcome")
