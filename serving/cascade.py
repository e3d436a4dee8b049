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

from serving.config import CascadeConfig, Deferral
from serving.deferral import Scorer, build_scorer
from serving.deferral.controller import BudgetController
from serving.deferral.incremental import Decision, StopRule, Verdict
from serving.deferral.load_aware import LoadGovernor
from serving.models.base import Chunk, Draft, Generation, GenerationRequest
from serving.receipt import CostTotals, Receipt, make_receipt


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
    ``tokens=False`` only that last chunk (one message instead of one per decoding step). ``stop``: the
    boundary's rule, which the tier may apply itself to end the request at a certain DEFER (its last
    chunk's ``finish_reason`` is then "deferred") and to hold tokens until the verdict. ``draft``: the
    previous tier's answer to verify and decode on from (``deferral.on_defer: verify``). It raises
    TierFailure when the tier cannot answer and BadRequest when it refuses the input. Closing the
    iterator early cancels the tier's work."""

    def stream(self, tier: str, req: GenerationRequest, tokens: bool = True,
               stop: Optional[StopRule] = None, draft: Optional[Draft] = None) -> AsyncIterator[Chunk]: ...


class Recorder(Protocol):
    def inc(self, name: str, value: float = 1.0, **tags: str) -> None: ...
    def observe(self, name: str, value: float, **tags: str) -> None: ...
    def set(self, name: str, value: float, **tags: str) -> None: ...


class NoMetrics:
    def inc(self, name: str, value: float = 1.0, **tags: str) -> None:
        pass

    def observe(self, name: str, value: float, **tags: str) -> None:
        pass

    def set(self, name: str, value: float, **tags: str) -> None:
        pass


@dataclass
class Plan:
    request: GenerationRequest
    tiers: list[str]  # tiers to try, in order
    forced: bool
    threshold: Optional[float]  # the request's override for every boundary; None: configured / controller
    include_logprobs: bool = False
    stream: bool = False  # the caller sends text as it comes (GenerateStream): the last tier streams tokens


@dataclass
class TierRun:
    """What one tier did for a request."""

    tier: str
    generation: Generation  # finish_reason "deferred": the rule stopped it early (its tokens so far)
    score: Optional[float]  # the rule's score, for a tier that may defer onward
    latency_ms: float       # wall time of the call as the walk saw it
    decided_at: Optional[int] = None  # answer tokens the rule had read when it decided
    decided_early: bool = False       # decided before the tier's answer was complete


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
    threshold: Optional[float]  # the threshold at the first boundary (None when no rule ran)
    runs: list[TierRun] = field(default_factory=list)
    degraded: str = ""  # why the answer is an earlier tier's, when a later tier failed
    receipt: Optional[Receipt] = None
    load_shed: bool = False  # an answer kept only because load-aware deferral had lowered its threshold


Event = Union[Text, Outcome]


@dataclass
class Boundary:
    """The rule between a tier and the next one: scorer, threshold (or budget controller), window."""

    rule: str
    alpha: float
    threshold: float
    scorer: Scorer
    controller: Optional[BudgetController]
    window: Optional[int]
    early: bool
    model: Optional[dict] = None  # a post-hoc rule's fitted model
    verify: bool = False  # on DEFER the next tier verifies this tier's draft
    verify_floor: Optional[float] = None  # ... unless its score is below this (then it regenerates)
    load: Optional[LoadGovernor] = None  # load-aware deferral (deferral.load_aware)

    def wants_verify(self, score: Optional[float]) -> bool:
        return self.verify and (self.verify_floor is None or (score is not None and score >= self.verify_floor))

    @classmethod
    def from_config(cls, d: Deferral) -> "Boundary":
        r = d.resolved()
        controller = (BudgetController(d.target_deferral, r["threshold"], d.controller_window, d.controller_warmup)
                      if d.target_deferral is not None else None)
        return cls(r["rule"], r["alpha"], r["threshold"], build_scorer(r["rule"], r["alpha"], r["model"]), controller,
                   d.decide_within_tokens, d.early_deferral, r["model"], d.on_defer == "verify", d.verify_floor,
                   LoadGovernor(d.load_aware) if d.load_aware is not None else None)

    def decision(self) -> Decision:
        return Decision(self.scorer, self.rule, self.alpha, self.window, self.early)

    def stop_rule(self, threshold: float) -> StopRule:
        return StopRule(self.rule, self.alpha, threshold, self.window, self.early, self.model)

    def current(self, override: Optional[float]) -> float:
        """The threshold in force: the request's, else the budget controller's, else the configured one."""
        if override is not None:
            return override
        return self.controller.threshold() if self.controller else self.threshold


class Cascade:
    """The deferral policy over a list of tiers."""

    def __init__(self, config: CascadeConfig, client: TierClient, metrics: Recorder | None = None):
        self.cfg = config
        self.client = client
        self.metrics = metrics or NoMetrics()
        self.names = config.tier_names
        # boundaries[k]: the rule after tier k (every tier but the last)
        self.boundaries = [Boundary.from_config(config.boundary(k)) for k in range(len(self.names) - 1)]
        first = self.boundaries[0] if self.boundaries else Boundary.from_config(config.deferral)
        self.rule, self.threshold = first.rule, first.threshold  # what responses report
        self.inflight = {n: 0 for n in self.names}  # calls in flight per tier (the load load-aware deferral reads)
        self.costs = CostTotals()  # running totals of the receipts

    @property
    def needs_embedding(self) -> bool:
        return any(b.scorer.needs_embedding for b in self.boundaries)

    async def walk(self, plan: Plan) -> AsyncIterator[Event]:
        """Runs the cascade for one request. Raises TierFailure when no tier can answer (or a failure
        cannot be degraded) and BadRequest when a tier refuses the input."""
        runs: list[TierRun] = []
        first_score, first_threshold = math.nan, None
        prev: Optional[TierRun] = None
        for k, name in enumerate(plan.tiers):
            final = plan.forced or k == len(plan.tiers) - 1
            index = self.names.index(name)
            boundary = self.boundaries[index] if index < len(self.boundaries) else None
            decision = boundary.decision() if boundary is not None and not final else None
            early = decision is not None and decision.can_decide_early
            base = threshold = boundary.current(plan.threshold) if boundary is not None else None
            load = boundary.load if boundary is not None and plan.threshold is None and not final else None

            def now() -> Optional[float]:
                """The threshold in force: a load-aware boundary's follows the next tier's load as it is now."""
                nonlocal threshold
                if load is not None:
                    threshold = load.threshold(base, self.inflight[self.names[index + 1]])
                return threshold

            # A load-aware boundary decides at the threshold in force when it decides (a burst that saturates the
            # next tier while this one is answering counts); the tier stops early only below the floor, where no
            # load can change the verdict.
            stop = boundary.stop_rule(threshold if load is None else min(base, load.cfg.floor)) if early else None
            flowing = final and plan.stream  # this tier's text goes to the client as it comes
            t0 = time.perf_counter()
            gen: Optional[Generation] = None
            sent, held, pushed = False, [], 0
            ids, lps, prompt_tokens = [], [], 0
            verdict = Verdict.UNDECIDED
            try:
                # Per-token chunks only where someone reads them (a streamed answer); the tier applies an
                # early-deciding rule itself, so a deferred request ends there without a message per token.
                tokens = flowing or (early and plan.stream)
                draft = None
                if prev is not None and self.boundaries[self.names.index(prev.tier)].wants_verify(prev.score):
                    g = prev.generation
                    draft = Draft(g.token_ids, g.text, g.tokenizer)
                async with aclosing(self._call(name, plan.request, tokens, stop, draft)) as chunks:
                    async for chunk in chunks:  # leaving this loop closes the stream: the tier stops
                        ids += chunk.token_ids
                        lps += chunk.logprobs
                        prompt_tokens = chunk.prompt_tokens or prompt_tokens
                        gen = chunk.final or gen
                        if early and verdict is Verdict.UNDECIDED and chunk.token_ids:
                            verdict = decision.push(chunk.logprobs, now())
                            pushed += len(chunk.logprobs)
                            if verdict is Verdict.DEFER:
                                held.append(chunk.text)
                                break
                            if verdict is Verdict.ACCEPT and plan.stream:
                                flowing = True  # accepted within the window: what was held goes now
                                chunk_text = "".join(held) + chunk.text
                                held = []
                                if chunk_text:
                                    sent = True
                                    yield Text(name, chunk_text)
                                continue
                        if flowing and chunk.text:
                            sent = True
                            yield Text(name, chunk.text)
                        else:
                            held.append(chunk.text)
                if gen is None:
                    if verdict is not Verdict.DEFER:
                        raise TierFailure(name, "error", f"tier {name!r} ended its stream without an answer")
                    gen = Generation(text="".join(held), token_ids=ids, logprobs=lps, prompt_tokens=prompt_tokens,
                                     finish_reason="deferred", tier_ms=(time.perf_counter() - t0) * 1e3)
                elif early and verdict is Verdict.UNDECIDED:  # tokens that came only with the answer
                    verdict = decision.push(gen.logprobs[pushed:], now())
            except TierFailure as f:
                self.metrics.inc("cascade_tier_errors", tier=name, reason=f.reason)
                if prev is None or sent or self.cfg.reliability.on_tier_failure != "degrade":
                    raise
                self.metrics.inc("cascade_fallbacks", tier=name, reason=f.reason)
                answer = await self._complete(prev, plan, f)
                yield Text(prev.tier, answer.text)
                calls = [(r.tier, r.generation) for r in runs]
                if answer is not prev.generation:  # the tier was re-run to complete its answer
                    calls.append((prev.tier, answer))
                yield Outcome(answer, prev.tier, True, first_score, first_threshold, runs,
                              degraded=f"{f}; answered by {prev.tier!r}", receipt=self._receipt(calls, answer))
                return
            ms = (time.perf_counter() - t0) * 1e3
            self.metrics.observe("cascade_tier_latency_ms", ms, tier=name)
            self.metrics.inc("cascade_tier_tokens", gen.prompt_tokens, tier=name, kind="prompt")
            self.metrics.inc("cascade_tier_tokens", gen.completion_tokens, tier=name, kind="completion")
            score = None
            if boundary is not None:
                if decision is None:  # a forced tier: its score is still reported
                    score = boundary.scorer(gen.logprobs, gen.embedding)
                else:
                    verdict, score = decision.finish(
                        gen.logprobs, now() if verdict is Verdict.UNDECIDED else threshold, gen.embedding)
                    if load is not None:
                        self.metrics.set("cascade_effective_threshold", threshold, tier=name)
                    if boundary.controller is not None and plan.threshold is None:
                        boundary.controller.record(score)
                if k == 0:
                    first_score, first_threshold = score, threshold
            at = decision.decided_at if decision is not None else None
            run = TierRun(name, gen, score, ms, at, at is not None and (gen.finish_reason == "deferred"
                                                                          or at < gen.completion_tokens))
            runs.append(run)
            if run.decided_early:
                self.metrics.inc("cascade_early_decisions", tier=name, verdict=verdict.value)
            if gen.draft_tokens:
                self.metrics.inc("cascade_draft_tokens", gen.draft_tokens, tier=name, kind="offered")
                self.metrics.inc("cascade_draft_tokens", gen.draft_accepted, tier=name, kind="accepted")
            if final or verdict is Verdict.ACCEPT:
                if not sent and not flowing:
                    yield Text(name, gen.text)
                shed = not final and score < base  # accepted at the lowered threshold only
                if shed:
                    self.metrics.inc("cascade_load_shed", tier=name)
                yield Outcome(gen, name, k > 0, first_score, first_threshold, runs,
                              receipt=self._receipt([(r.tier, r.generation) for r in runs], gen), load_shed=shed)
                return
            self.metrics.inc("cascade_deferrals", tier=name)
            prev = run
        raise AssertionError("unreachable: the last tier always answers")

    async def _call(self, name: str, req: GenerationRequest, tokens: bool, stop: Optional[StopRule] = None,
                    draft: Optional[Draft] = None) -> AsyncIterator[Chunk]:
        """The tier client's stream, counted in ``inflight`` while it is open."""
        self.inflight[name] += 1
        self.metrics.set("cascade_tier_inflight", self.inflight[name], tier=name)
        try:
            async with aclosing(self.client.stream(name, req, tokens, stop, draft)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self.inflight[name] -= 1
            self.metrics.set("cascade_tier_inflight", self.inflight[name], tier=name)

    def _receipt(self, calls: list[tuple[str, Generation]], answer: Generation) -> Receipt:
        """The request's receipt, added to the cost metrics and the running totals."""
        r = make_receipt(self.cfg, calls, answer)
        for tier, c in r.by_tier.items():
            if c > 0:
                self.metrics.inc("cascade_cost", c, tier=tier)
        if r.strong_only > 0:
            self.metrics.inc("cascade_cost_strong_only", r.strong_only)
        self.costs.add(r)
        return r

    async def _complete(self, prev: TierRun, plan: Plan, failure: TierFailure) -> Generation:
        """The earlier tier's whole answer for a degraded reply: its own, or, when the rule stopped it
        early, a second call that runs it to the end (raises ``failure`` if that fails too)."""
        if prev.generation.finish_reason != "deferred":
            return prev.generation
        try:
            async with aclosing(self._call(prev.tier, plan.request, False)) as chunks:
                async for chunk in chunks:
                    if chunk.final is not None:
                        return chunk.final
        except TierFailure:
            pass
        raise failure

    async def run(self, plan: Plan) -> Outcome:
        """The walk collected: what unary calls use (the answer's text is ``outcome.answer.text``)."""
        async with aclosing(self.walk(plan)) as events:
            async for ev in events:
                if isinstance(ev, Outcome):
                    return ev
        raise AssertionError("unreachable: the walk always ends with an Outcome")
