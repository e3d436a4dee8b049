"""The cascade walk: tiers in order, one :class:`~serving.core.attempt.TierAttempt` each, until a tier's
answer is accepted (or the last tier answers); the failure policy when a later tier fails. No Ray, no
gRPC: tiers are reached through the small :class:`TierClient` protocol (the Serve client in
``serving/serve/tier_client.py``; fakes in the unit tests), and the walk yields events, so unary and
streaming calls of both fronts are thin adapters over the same walk.

Events, in order: :class:`Text` for answer text that is certain to be part of the answer (the last
tier's tokens as they arrive; an earlier tier's text once its rule accepts it), then one
:class:`Outcome`.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Optional, Protocol

from serving.core.attempt import TierAttempt
from serving.core.breaker import RecentShare
from serving.core.errors import BadRequest, TierFailure
from serving.core.receipt import JUDGED, CostTotals, Receipt, make_receipt
from serving.core.request import CascadeRequest, Event, JudgeRun, Outcome, Text, TierRun
from serving.core.speculative import TokenLevelAttempt
from serving.core.types import Chunk, Draft, Generation, GenerationRequest, final_chunk
from serving.deferral import Scorer, build_scorer, judges
from serving.deferral.controller import BudgetController
from serving.deferral.incremental import StopRule, is_monotone
from serving.deferral.judges import Reference, Window
from serving.deferral.load_aware import LoadGovernor, Watermarks
from serving.deferral.token_level import TokenAcceptance

if TYPE_CHECKING:  # the config is read, never imported (core stays free of the config's dependencies)
    from serving.config import CascadeConfig, Deferral


class TierClient(Protocol):
    """Calls one tier. ``stream`` yields the tier's chunks (the last carries ``final`` and, when the call
    carried a rule, the tier's ``decision``); with ``tokens=False`` only that last chunk. ``stop``: the
    boundary's rule, which the tier applies (``serving.core.decide``). ``draft``: the previous tier's
    answer to verify and decode on from (``deferral.on_defer: verify``). It raises TierFailure when the
    tier cannot answer and BadRequest when it refuses the input. Closing the iterator early cancels the
    tier's work."""

    def stream(
        self,
        tier: str,
        req: GenerationRequest,
        tokens: bool = True,
        stop: Optional[StopRule] = None,
        draft: Optional[Draft] = None,
    ) -> AsyncIterator[Chunk]: ...

    async def call(self, name: str, method: str, *args, timeout: Optional[float] = None):
        """A unary call of a tier (or judge) deployment's method (``judge``: a judge's read) under the same
        timeout (``timeout``, else the callee's own), retry and breaker; raises TierFailure / BadRequest."""


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
class JudgeGate:
    """A boundary's judge as the walk uses it: who judges, how, where (the window of token-level scores) and
    against which threshold."""

    name: str  # the deployment (a tier's, or the judge's own) the walk calls
    method: str
    references: list[Reference]
    both_orders: bool
    window: Window
    threshold: float
    timeout_s: float

    @classmethod
    def from_config(cls, d: Deferral) -> Optional[JudgeGate]:
        s = d.judge_settings()
        if s is None:
            return None
        j = d.judge
        return cls(
            name=j.model if isinstance(j.model, str) else j.name,
            method=s.method,
            references=[Reference.of(r) for r in s.references],
            both_orders=s.both_orders,
            window=Window(s.low, s.high),
            threshold=s.threshold,
            timeout_s=j.timeout_s,
        )


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
    token_rule: Optional[TokenAcceptance] = None  # ... token by token, a token-level cascade (None: lossless)
    load: Optional[LoadGovernor] = None  # load-aware deferral (deferral.load_aware)
    judge: Optional[JudgeGate] = None  # a judge decides inside its window of token-level scores (deferral.judge)

    @classmethod
    def from_config(cls, d: Deferral) -> Boundary:
        r = d.resolved()
        controller = (
            BudgetController(d.target_deferral, r.threshold, d.controller_window, d.controller_warmup)
            if d.target_deferral is not None
            else None
        )
        load = LoadGovernor(Watermarks(**d.load_aware.model_dump())) if d.load_aware is not None else None
        return cls(
            rule=r.rule,
            alpha=r.alpha,
            threshold=r.threshold,
            scorer=build_scorer(r.rule, r.alpha, r.model),
            controller=controller,
            window=d.decide_within_tokens,
            early=d.early_deferral,
            model=r.model,
            verify=d.on_defer == "verify",
            verify_floor=d.verify_floor,
            token_rule=TokenAcceptance(**d.token_rule.model_dump()) if d.token_rule else None,
            load=load,
            judge=JudgeGate.from_config(d),
        )

    @property
    def decides_early(self) -> bool:
        """The tier may reach the verdict before the answer is complete (an exact DEFER, or a window)."""
        return (self.early and is_monotone(self.rule, self.alpha)) or self.window is not None

    def wants_verify(self, score: Optional[float]) -> bool:
        return self.verify and (self.verify_floor is None or (score is not None and score >= self.verify_floor))

    def stop_rule(self, threshold: float, floor: Optional[float] = None, score_only: bool = False) -> StopRule:
        return StopRule(self.rule, self.alpha, threshold, self.window, self.early, self.model, floor, score_only)

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
        # judged? over the last requests that reached a judged boundary, by the tier before it
        self.judged = {self.names[k]: RecentShare(200) for k, b in enumerate(self.boundaries) if b.judge is not None}

    @property
    def needs_embedding(self) -> bool:
        return any(b.scorer.needs_embedding for b in self.boundaries)

    def boundary_of(self, tier: str) -> Optional[Boundary]:
        k = self.names.index(tier)
        return self.boundaries[k] if k < len(self.boundaries) else None

    async def walk(self, req: CascadeRequest) -> AsyncIterator[Event]:
        """Runs the cascade for one request. Raises TierFailure when no tier can answer (or a failure
        cannot be degraded) and BadRequest when a tier refuses the input."""
        if req.token_alpha is not None and not any(b.token_rule and not b.token_rule.lossless for b in self.boundaries):
            raise BadRequest(
                "this cascade has no token-level rule with an alpha (deferral.token_rule: chow, diff or token)",
                "token_alpha",
            )
        if req.token_alpha is not None and (req.forced or not _plain(req)):
            raise BadRequest(
                "applies to a token-level cascade, which a forced tier or a request with sampling, stop strings, "
                "penalties, logit bias or log-prob alternatives does not take: leave it unset",
                "token_alpha",
            )
        runs: list[TierRun] = []
        first: Optional[TierAttempt] = None
        prev: Optional[TierRun] = None
        for k in range(len(req.tiers)):
            token_level = self._token_level(req, k, prev)
            attempt = token_level or TierAttempt(self, req, k, prev)
            first = first or attempt
            try:
                async with aclosing(attempt.texts()) as texts:
                    async for text in texts:
                        yield text
                if token_level is not None and token_level.generation is None:  # another vocabulary: ordinary
                    attempt = TierAttempt(self, req, k, prev)
                    async with aclosing(attempt.texts()) as texts:
                        async for text in texts:
                            yield text
            except TierFailure as f:
                self.metrics.inc("cascade_tier_errors", tier=attempt.name, reason=f.reason)
                if prev is None or attempt.sent or self.cfg.reliability.on_tier_failure != "degrade":
                    raise
                self.metrics.inc("cascade_fallbacks", tier=attempt.name, reason=f.reason)
                answer = await self._complete(prev, req, f)
                yield Text(prev.tier, answer.text)
                calls = _calls(runs)
                if answer is not prev.generation:  # the tier was re-run to complete its answer
                    calls.append((prev.tier, answer))
                yield Outcome(
                    answer,
                    prev.tier,
                    True,
                    _score(first),
                    first.threshold,
                    runs,
                    degraded=f"{f}; answered by {prev.tier!r}",
                    receipt=self._receipt(calls, answer),
                )
                return
            if isinstance(attempt, TokenLevelAttempt):
                runs.append(attempt.run())
                gen = attempt.generation
                self.metrics.inc("cascade_token_level", attempt.passes, tier=attempt.name, kind="passes")
                self.metrics.inc("cascade_token_level", attempt.replaced, tier=attempt.name, kind="replaced")
                self.metrics.inc("cascade_draft_tokens", gen.draft_tokens, tier=attempt.name, kind="offered")
                self.metrics.inc("cascade_draft_tokens", gen.draft_accepted, tier=attempt.name, kind="accepted")
                calls = _calls(runs) + [(prev.tier, d) for d in attempt.drafts]
                yield Outcome(
                    gen, attempt.name, True, _score(first), first.threshold, runs, receipt=self._receipt(calls, gen)
                )
                return
            run = attempt.run()
            runs.append(run)
            self._record(attempt, run)
            if attempt.accepted:
                gen = attempt.generation
                yield Outcome(
                    gen,
                    attempt.name,
                    k > 0,
                    _score(first),
                    first.threshold,
                    runs,
                    receipt=self._receipt(_calls(runs), gen),
                    load_shed=attempt.load_shed,
                )
                return
            self.metrics.inc("cascade_deferrals", tier=attempt.name)
            prev = run
        raise AssertionError("unreachable: the last tier always answers")

    def _token_level(self, req: CascadeRequest, k: int, prev: Optional[TierRun]) -> Optional[TokenLevelAttempt]:
        """The strong tier's attempt through a token-level cascade, when the boundary before it has a token rule
        and the request can take one: greedy, no controls that change the strong tier's choices or need its
        own tokens (stop strings, penalties, bias, log-prob alternatives), tier ``k`` the request's last.
        Otherwise None: an ordinary attempt (a lossless verification of the weak answer, or a regeneration)."""
        b = self.boundary_of(prev.tier) if prev is not None else None
        if b is None or b.token_rule is None or k != len(req.tiers) - 1 or not b.wants_verify(prev.score):
            return None
        if not _plain(req):
            return None
        rule = b.token_rule if req.token_alpha is None else replace(b.token_rule, alpha=req.token_alpha)
        return TokenLevelAttempt(self, req, k, prev, rule)

    def _record(self, attempt: TierAttempt, run: TierRun) -> None:
        name, gen, m = attempt.name, attempt.generation, self.metrics
        m.observe("cascade_tier_latency_ms", run.latency_ms, tier=name)
        m.inc("cascade_tier_tokens", gen.prompt_tokens, tier=name, kind="prompt")
        m.inc("cascade_tier_tokens", gen.completion_tokens, tier=name, kind="completion")
        if attempt.load is not None:
            m.set("cascade_effective_threshold", attempt.threshold, tier=name)
        if run.decided_early:
            m.inc("cascade_early_decisions", tier=name, verdict="accept" if attempt.accepted else "defer")
        if gen.draft_tokens:
            m.inc("cascade_draft_tokens", gen.draft_tokens, tier=name, kind="offered")
            m.inc("cascade_draft_tokens", gen.draft_accepted, tier=name, kind="accepted")
        if attempt.load_shed:
            m.inc("cascade_load_shed", tier=name)

    async def call(
        self,
        name: str,
        req: GenerationRequest,
        tokens: bool,
        stop: Optional[StopRule] = None,
        draft: Optional[Draft] = None,
    ) -> AsyncIterator[Chunk]:
        """The tier client's stream, counted in ``inflight`` while it is open."""
        with self.busy(name):
            async with aclosing(self.client.stream(name, req, tokens, stop, draft)) as chunks:
                async for chunk in chunks:
                    yield chunk

    @contextmanager
    def busy(self, name: str):
        """Counts a call of tier ``name`` in ``inflight`` (what load-aware deferral reads) while it runs."""
        self.inflight[name] += 1
        self.metrics.set("cascade_tier_inflight", self.inflight[name], tier=name)
        try:
            yield
        finally:
            self.inflight[name] -= 1
            self.metrics.set("cascade_tier_inflight", self.inflight[name], tier=name)

    async def judge(self, tier: str, gate: JudgeGate, req: CascadeRequest, answer: Generation) -> JudgeRun:
        """The boundary's judge on a finished answer: its comparisons in one call (one prefill each, batched),
        aggregated into a score. A judge that fails or refuses gives a run flagged ``fallback`` (the rule's
        verdict then stands): a judge never fails the request."""
        m = self.metrics
        comps = judges.prompts(gate.method, _question(req), answer.text, gate.references, gate.both_orders)
        t0 = time.perf_counter()
        score, tokens, fallback = math.nan, 0, ""
        try:
            out = await self.client.call(
                gate.name,
                "judge",
                [c.messages for c in comps],
                list(judges.verdicts(gate.method)),
                timeout=gate.timeout_s,
            )
            score = judges.aggregate(gate.method, comps, out["logprobs"], gate.references)
            tokens = int(out.get("prompt_tokens", 0))
        except TierFailure as f:
            fallback = f.reason
        except BadRequest:
            fallback = "refused"
        ms = (time.perf_counter() - t0) * 1e3
        m.inc("cascade_judge_calls", boundary=tier)
        m.inc("cascade_judge_comparisons", len(comps), boundary=tier)
        m.observe("cascade_judge_latency_ms", ms, boundary=tier)
        if fallback:
            m.inc("cascade_judge_fallbacks", boundary=tier, reason=fallback)
        return JudgeRun(
            gate.name,
            gate.method,
            score,
            gate.threshold,
            ms,
            len(comps),
            tokens,
            fallback,
            (gate.window.low, gate.window.high),
        )

    def record_judged(self, tier: str, judged: bool) -> None:
        share = self.judged[tier]
        share.add(judged)
        self.metrics.set("cascade_judged_share", share.share or 0.0, boundary=tier)

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

    async def _complete(self, prev: TierRun, req: CascadeRequest, failure: TierFailure) -> Generation:
        """The earlier tier's whole answer for a degraded reply: its own, or, when the rule stopped it
        early, a second call that runs it to the end (raises ``failure`` if that fails too)."""
        if prev.generation.finish_reason != "deferred":
            return prev.generation
        try:
            return (await final_chunk(self.call(prev.tier, req.request, False))).final
        except (TierFailure, EOFError):
            raise failure from None

    async def run(self, req: CascadeRequest) -> Outcome:
        """The walk collected: what unary calls use (the answer's text is ``outcome.answer.text``)."""
        async with aclosing(self.walk(req)) as events:
            async for ev in events:
                if isinstance(ev, Outcome):
                    return ev
        raise AssertionError("unreachable: the walk always ends with an Outcome")


def _calls(runs: list[TierRun]) -> list[tuple[str, Generation]]:
    """Every call that read or produced tokens, in order, for the receipt: each tier's, then its judge's."""
    out = []
    for r in runs:
        out.append((r.tier, r.generation))
        j = r.judge
        if j is not None and not j.fallback:
            out.append((j.judge, Generation("", [], [], j.prompt_tokens, JUDGED)))
    return out


def _plain(req: CascadeRequest) -> bool:
    """Greedy with no control that changes or needs the strong tier's own choices: what a token-level cascade takes."""
    return not set(req.request.decoding.requested()) - {"seed"}


def _question(req: CascadeRequest) -> str:
    """What the judge sees as the question: the prompt, or the last user message of a chat."""
    g = req.request
    if g.messages:
        return next(m["content"] for m in reversed(g.messages) if m["role"] == "user")
    return g.prompt


def _score(first: TierAttempt) -> float:
    """The first tier's confidence, NaN when it has none."""
    return math.nan if first.score is None else first.score
