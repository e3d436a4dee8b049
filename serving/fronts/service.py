"""The cascade service: what both fronts do around the walk, with no Ray, no grpc and no FastAPI (the Router
in ``serving/serve/router.py`` binds it to Serve's ports). It gates (auth, admission), runs the walks of a
request's answers (n > 1: side by side, a stream's events merged as they come) and records (metrics, logs,
shadow samples; the typed :class:`CascadeResponse` both fronts render)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from typing import Any, Optional, Protocol

from serving.core.breaker import RecentShare
from serving.core.errors import Overloaded, Unauthenticated
from serving.core.request import CascadeRequest, Outcome
from serving.core.walk import Cascade, Recorder
from serving.fronts.outcome import CascadeResponse
from serving.fronts.status import INTERNAL, status_of
from serving.fronts.status import retry_after_ms as retry_hint

log = logging.getLogger("ray.serve")  # inside a replica, Serve's logger stamps each line with the request id


class Sampler(Protocol):
    def offer(self, req: CascadeRequest, out: Outcome) -> None:
        """Takes an accepted answer for shadow sampling, off the request path."""


class CascadeService:
    def __init__(
        self,
        cascade: Cascade,
        *,
        name: str,
        limits,
        digests: Sequence[bytes],
        metrics: Recorder,
        shadow: Optional[Sampler] = None,
        request_id: Callable[[], str] = lambda: "",
    ):
        """``limits``: ``serving.config.Limits``; ``digests``: SHA-256 digests of the bearer tokens (none: no
        auth); ``request_id``: the id of the request being served (Serve's request context in a replica)."""
        self.cascade, self.name, self.limits, self.digests = cascade, name, limits, list(digests)
        self.metrics, self.shadow, self.request_id = metrics, shadow, request_id
        self.inflight = 0
        self.recent = RecentShare(200)  # deferred? over the last cascade requests (for `cascade status`)
        self.recent_degraded = RecentShare(200)
        self.counts: dict[str, int] = {}
        self.metrics.set("cascade_inflight", 0)

    # ---- gates -----------------------------------------------------------------------------
    def authorized(self, authorization: str) -> bool:
        """``authorization``: the gRPC metadata or HTTP header value ("Bearer <token>")."""
        if not self.digests:
            return True
        scheme, _, token = authorization.partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for d in self.digests:  # compare with every digest, constant time each: no early exit
            ok |= hmac.compare_digest(presented, d)
        return ok and scheme.lower() == "bearer"

    def gate(self, authorization: str, how: str) -> None:
        """Auth, then admission control (both fronts); ``how`` says how a client sends its token."""
        if not self.authorized(authorization):
            raise Unauthenticated(f"missing or invalid bearer token: send {how}")
        if self.inflight > self.limits.max_inflight:
            ms = self.limits.retry_after_ms
            raise Overloaded(
                f"overloaded: {self.inflight - 1} requests in flight on this router replica (limit "
                f"{self.limits.max_inflight}); retry after {ms} ms",
                ms,
            )

    def enter(self) -> float:
        """A request takes an in-flight slot (until :meth:`exit`); returns its start time."""
        self.inflight += 1
        self.metrics.set("cascade_inflight", self.inflight)
        return time.perf_counter()

    def exit(self) -> None:
        self.inflight -= 1
        self.metrics.set("cascade_inflight", self.inflight)

    def retry_after_ms(self, e: BaseException) -> Optional[int]:
        return retry_hint(e, self.limits.retry_after_ms)

    # ---- walks -------------------------------------------------------------------------------
    async def run_all(self, reqs: list[CascadeRequest]) -> list[Outcome]:
        """The walks of one request's answers, side by side (n > 1: each answer its own walk)."""
        if len(reqs) == 1:
            return [await self.cascade.run(reqs[0])]
        return list(await asyncio.gather(*(self.cascade.run(r) for r in reqs)))

    async def events(self, reqs: list[CascadeRequest]) -> AsyncIterator[tuple[int, Any]]:
        """(answer index, walk event) of every answer's walk as they come (n > 1: side by side)."""
        if len(reqs) == 1:
            async with aclosing(self.cascade.walk(reqs[0])) as events:
                async for ev in events:
                    yield 0, ev
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, req: CascadeRequest) -> None:
            try:
                async with aclosing(self.cascade.walk(req)) as events:
                    async for ev in events:
                        await queue.put((i, ev))
            except Exception as e:  # handed to the reader, which raises it
                await queue.put((i, e))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(reqs)]
        try:
            running = len(tasks)
            while running:
                i, ev = await queue.get()
                if ev is None:
                    running -= 1
                elif isinstance(ev, Exception):
                    raise ev
                else:
                    yield i, ev
        finally:
            for task in tasks:  # a walk still running when the reader stops (an error, a client gone): cancelled
                task.cancel()

    def response(self, req: CascadeRequest, out: Outcome, t0: float, text: Optional[str] = None) -> CascadeResponse:
        return CascadeResponse.of(
            req,
            out,
            rule=self.cascade.rule,
            default_threshold=self.cascade.threshold,
            latency_ms=(time.perf_counter() - t0) * 1e3,
            request_id=self.request_id(),
            text=text,
        )

    # ---- records -----------------------------------------------------------------------------
    def finish(self, method: str, code: str, tier: str, t0: float) -> None:
        self.metrics.inc("cascade_requests", method=method, code=code, tier=tier)
        self.metrics.observe("cascade_request_latency_ms", (time.perf_counter() - t0) * 1e3, method=method, code=code)
        self.counts[code] = self.counts.get(code, 0) + 1

    def answered(self, method: str, req: CascadeRequest, out: Outcome, t0: float) -> None:
        self.finish(method, "OK", out.answered_by, t0)
        j = out.runs[0].judge if out.runs else None
        log.info(
            "answered by %s deferred=%s score=%.4f%s%s",
            out.answered_by,
            out.deferred,
            out.score,
            "" if j is None else f" judge={j.score:.4f} ({j.fallback or 'decided'}, {j.latency_ms:.0f} ms)",
            f" degraded: {out.degraded}" if out.degraded else "",
        )
        if req.forced:
            return
        if not math.isnan(out.score):
            self.metrics.observe("cascade_uncertainty", -out.score, rule=self.cascade.rule)
        self.recent.add(out.deferred)
        self.recent_degraded.add(bool(out.degraded))
        self.metrics.set("cascade_deferral_share", self.recent.share)
        if out.answered_by != self.cascade.names[-1]:
            self.metrics.inc("cascade_strong_calls_avoided")
        if self.shadow is not None:  # off the request path: its task starts after the handler hands the answer on
            self.shadow.offer(req, out)

    def refused(self, method: str, e: Exception, t0: float) -> str:
        """Records a request that ended with an error; returns the message the client gets."""
        status = status_of(e)
        message = str(e)
        if status is INTERNAL:  # a bug: a short status, the traceback only in the log
            log.error("unexpected error", exc_info=e)
            message = f"internal error ({type(e).__name__}); request id {self.request_id()}"
        elif status.reason in ("invalid_argument", "unauthenticated", "overloaded", "too_large", "body_timeout"):
            self.metrics.inc("cascade_rejections", reason=status.reason)
        log.info("refused %s: %s", status.grpc, message)  # never the request's metadata (it may hold a token)
        self.finish(method, status.grpc, "", t0)
        return message

    def cancelled(self, method: str, t0: float) -> None:
        self.metrics.inc("cascade_cancelled", method=method)
        self.finish(method, "CANCELLED", "", t0)
        log.info(
            "cancelled by the client after %.0f ms (deadline or cancel); tier work cancelled",
            (time.perf_counter() - t0) * 1e3,
        )
