"""One tier's part in a request: the call (its rule, its draft, whether tokens are read), the text it
lets through, and its conclusion. The tier decides (``serving.core.decide``); the attempt reads the
verdict from the last chunk and only sets the threshold in force where load-aware deferral moves it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import TYPE_CHECKING, Optional

from serving.core.errors import TierFailure
from serving.core.request import CascadeRequest, JudgeRun, Text, TierRun
from serving.core.types import Chunk, Draft, Generation, TierDecision
from serving.deferral.rules import should_defer

if TYPE_CHECKING:
    from serving.core.walk import Boundary, Cascade


class TierAttempt:
    def __init__(self, cascade: Cascade, req: CascadeRequest, k: int, prev: Optional[TierRun]):
        self.cascade, self.req = cascade, req
        self.name = req.tiers[k]
        index = cascade.names.index(self.name)
        self.next_tier = cascade.names[index + 1] if index + 1 < len(cascade.names) else None
        self.final = req.forced or k == len(req.tiers) - 1  # its answer is the answer, whatever its score
        self.boundary: Optional[Boundary] = cascade.boundaries[index] if index < len(cascade.boundaries) else None
        b = self.boundary
        self.base = b.current(req.threshold) if b is not None else None  # the threshold the tier is sent
        # load-aware deferral moves the threshold with the next tier's load, read when the answer is in
        self.load = b.load if b is not None and req.threshold is None and not self.final else None
        # the judge decides inside its window (not for a forced tier, nor a request that sets its own threshold):
        # the tier then stops early only at a DEFER certain below the window and never accepts early
        self.gate = b.judge if b is not None and req.threshold is None and not self.final else None
        floor = self.load.cfg.floor if self.load else None
        if self.gate is not None:
            floor = self.gate.window.low if floor is None else min(floor, self.gate.window.low)
        self.stop = b.stop_rule(self.base, floor=floor, score_only=self.final) if b is not None else None
        # per-token chunks only where someone reads them: a streamed answer (the last tier's, or an earlier
        # tier's accepted within a decision window)
        self.tokens = req.stream and (self.final or (b is not None and b.decides_early))
        self.draft = None
        self.verify_skipped = ""
        before = cascade.boundary_of(prev.tier) if prev is not None else None
        if before is not None and before.wants_verify(prev.score):
            if req.request.decoding.sampled:  # verification keeps a greedy answer exact, not a sampled one's law
                self.verify_skipped = "sampled"
            else:
                g = prev.generation
                self.draft = Draft(g.token_ids, g.text, g.tokenizer)
        self.sent = False  # some of its text went to the client
        self.generation: Optional[Generation] = None
        self.reported: Optional[TierDecision] = None
        self.ms = 0.0
        self.threshold: Optional[float] = self.base  # the threshold in force when it was decided
        self.score: Optional[float] = None
        self.accepted = False
        self.judged: Optional[JudgeRun] = None

    async def texts(self) -> AsyncIterator[Text]:
        """Calls the tier and yields the text that is certain to be the answer as it comes; then the
        attempt is concluded (``accepted``, ``score``, ``threshold``). Raises TierFailure / BadRequest."""
        t0 = time.perf_counter()
        tail = Chunk()
        async with aclosing(
            self.cascade.call(self.name, self.req.request, self.tokens, self.stop, self.draft)
        ) as chunks:
            async for chunk in chunks:  # leaving this loop closes the stream: the tier stops
                if chunk.final is None:
                    if chunk.text or chunk.token_ids:  # the tier sends tokens before its last chunk only once certain
                        self.sent = self.sent or bool(chunk.text)
                        yield _text(self.name, chunk)
                    continue
                self.generation, self.reported, tail = chunk.final, chunk.decision, chunk
        if self.generation is None:
            raise TierFailure(self.name, "error", f"tier {self.name!r} ended its stream without an answer")
        await self._judge()
        self.ms = (time.perf_counter() - t0) * 1e3
        self._conclude()
        if self.accepted or self.final:
            if not self.sent and not tail.token_ids:  # nothing of it went out: the whole answer, at once
                g = self.generation
                yield Text(
                    self.name,
                    g.text,
                    list(g.token_ids),
                    list(g.logprobs),
                    g.token_texts,
                    g.top_logprobs,
                    g.prompt_tokens,
                )
            elif tail.text or tail.token_ids:
                yield _text(self.name, tail)

    async def _judge(self) -> None:
        """Asks the boundary's judge when the finished answer's token-level score lies in its window (an
        answer the rule stopped early was a certain DEFER below it: the rule's verdict stands)."""
        g, d = self.gate, self.reported
        if g is None or d is None:
            return
        inside = self.generation.finish_reason != "deferred" and g.window.inside(d.score)
        self.cascade.record_judged(self.name, inside)
        if inside:
            self.judged = await self.cascade.judge(self.name, g, self.req, self.generation)

    def _conclude(self) -> None:
        d = self.reported
        if self.boundary is None or d is None:
            self.accepted = True
            return
        self.score = d.score
        if self.final:
            self.accepted = True
            return
        if self.judged is not None and self.judged.decided:  # inside the window the judge decides
            defer = should_defer(self.judged.score, self.judged.threshold)
        elif self.load is not None:  # the walk sets the threshold in force; a DEFER below the floor is certain
            self.threshold = self.load.threshold(self.base, self.cascade.inflight[self.next_tier])
            defer = self.generation.finish_reason == "deferred" or should_defer(d.score, self.threshold)
        else:
            defer = d.verdict == "defer"
        self.accepted = not defer
        if self.boundary.controller is not None and self.req.threshold is None:
            self.boundary.controller.record(d.score)

    @property
    def load_shed(self) -> bool:
        """Accepted only because load-aware deferral had lowered the threshold."""
        if self.load is None or (self.judged is not None and self.judged.decided):
            return False
        return self.accepted and not self.final and self.score is not None and self.score < self.base

    def run(self) -> TierRun:
        d = self.reported
        decided = d is not None and not self.final
        return TierRun(
            self.name,
            self.generation,
            self.score,
            self.ms,
            d.decided_at if decided else None,
            decided and d.decided_early,
            self.verify_skipped,
            self.judged,
        )


def _text(tier: str, chunk: Chunk) -> Text:
    return Text(
        tier, chunk.text, chunk.token_ids, chunk.logprobs, chunk.token_texts, chunk.top_logprobs, chunk.prompt_tokens
    )
