"""The Router: gRPC ingress that implements cascade.v1.Cascade and applies the deferral rule."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional

import grpc
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.handle import DeploymentHandle

from serving.config import CascadeConfig, parse_config
from serving.deferral import build_scorer, should_defer
from serving.deferral.controller import BudgetController
from serving.deployments.metrics import Metrics
from serving.models import Generation, GenerationRequest, InvalidInput
from serving.reliability import CircuitBreaker, RecentShare
from serving.service import MalformedRequest
from serving._proto.cascade.v1 import cascade_pb2 as pb

log = logging.getLogger("ray.serve")  # Serve's replica logger stamps each line with the request id
ROLES = ("system", "user", "assistant")


class BadRequest(ValueError):
    """A request the router refuses with INVALID_ARGUMENT; the message names the field."""


class TierFailure(Exception):
    """A tier could not answer; ``reason`` is one of timeout, replica_died, overloaded,
    unavailable, breaker_open, error."""

    def __init__(self, tier: str, reason: str, message: str):
        super().__init__(message)
        self.tier, self.reason = tier, reason


class Refusal(Exception):
    """Ends a request with a gRPC status (and optional trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, trailing: tuple = ()):
        super().__init__(message)
        self.code, self.reason, self.trailing = code, reason, list(trailing)


@dataclass
class Plan:
    request: GenerationRequest
    tiers: list[str]  # tiers to try, in order
    forced: bool
    threshold: Optional[float]  # None: the budget controller decides
    include_logprobs: bool = False


@dataclass
class Outcome:
    answer: Optional[Generation]
    answered_by: str
    deferred: bool
    score: float
    results: list[pb.TierResult]
    degraded: str = ""  # why the answer is an earlier tier's, when a later tier failed
    prev: Optional[tuple[str, Generation]] = field(default=None, repr=False)  # stream_last: the tier before


class CascadeCore:
    """The request logic without the proto methods, so both RPCs share it."""

    def __init__(self, config: CascadeConfig, tiers: dict[str, DeploymentHandle], metrics: Metrics):
        self.cfg = config
        self.handles = tiers
        self.metrics = metrics
        self.names = config.tier_names
        rel = config.reliability
        self.breakers = {n: CircuitBreaker(rel.breaker_failures, rel.breaker_cooldown_s) for n in self.names}
        d = config.deferral
        rule = d.resolved()
        self.rule, self.threshold = rule["rule"], rule["threshold"]
        self.scorer = build_scorer(rule["rule"], rule["alpha"], rule["model"])
        self.controller = (BudgetController(d.target_deferral, self.threshold, d.controller_window, d.controller_warmup)
                           if d.target_deferral is not None else None)

    def plan(self, r: pb.GenerateRequest) -> Plan:
        lim = self.cfg.limits
        if isinstance(r, MalformedRequest):
            raise BadRequest(f"the request ({r.size} bytes) is not a valid cascade.v1.GenerateRequest: {r.error}")
        if r.prompt and r.messages:
            raise BadRequest("set either `prompt` or `messages`, not both")
        if len(r.messages) > lim.max_messages:
            raise BadRequest(f"`messages` has {len(r.messages)} entries; the limit is {lim.max_messages}")
        if r.messages:
            for i, m in enumerate(r.messages):
                if m.role not in ROLES:
                    raise BadRequest(f"messages[{i}].role must be one of {list(ROLES)}, got {m.role!r}")
                if not m.content.strip():
                    raise BadRequest(f"messages[{i}].content must not be empty")
            if r.messages[-1].role != "user":
                raise BadRequest("the last of `messages` must have role 'user'")
            size = sum(len(m.content) for m in r.messages)
        else:
            if not r.prompt.strip():
                raise BadRequest("`prompt` must not be empty (or send `messages`)")
            size = len(r.prompt)
        if size > lim.max_prompt_chars:
            raise BadRequest(f"prompt is {size} characters; the limit is {lim.max_prompt_chars}")
        if r.max_new_tokens > lim.max_new_tokens:
            raise BadRequest(f"`max_new_tokens` must be between 1 and {lim.max_new_tokens} (0 = tier default), "
                             f"got {r.max_new_tokens}")
        if r.force_tier and r.force_tier not in self.names:
            raise BadRequest(f"`force_tier` {r.force_tier!r} is not a tier; known tiers: {self.names}")
        threshold = None if self.controller else self.threshold
        if r.HasField("threshold"):
            if not math.isfinite(r.threshold):
                raise BadRequest(f"`threshold` must be a finite number, got {r.threshold}")
            threshold = r.threshold
        req = GenerationRequest(
            prompt=r.prompt, messages=[{"role": m.role, "content": m.content} for m in r.messages],
            max_new_tokens=r.max_new_tokens or None, embed=self.scorer.needs_embedding,
        )
        tiers = [r.force_tier] if r.force_tier else self.names
        return Plan(req, tiers, bool(r.force_tier), threshold, r.include_logprobs)

    def _score(self, name: str, gen: Generation) -> Optional[float]:
        """The rule's score for a tier that may defer onward (every tier but the last)."""
        return self.scorer(gen.logprobs, gen.embedding) if name != self.names[-1] else None

    def _defer(self, plan: Plan, score: float) -> bool:
        """Applies the threshold (the request's, the configured one, or the budget controller's)."""
        if plan.threshold is None:
            defer, plan.threshold = self.controller.decide(score)
            return defer
        return should_defer(score, plan.threshold)

    @staticmethod
    def _tier_result(plan: Plan, name: str, gen: Generation, score: Optional[float], ms: float) -> pb.TierResult:
        return pb.TierResult(tier=name, text=gen.text, score=score, latency_ms=ms,
                             prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                             token_logprobs=gen.logprobs if plan.include_logprobs else [],
                             finish_reason=gen.finish_reason, tier_ms=gen.tier_ms)

    async def call(self, name: str, req: GenerationRequest) -> Generation:
        """One tier call under the tier's timeout, its circuit breaker and the retry policy.
        Raises TierFailure (the tier could not answer) or BadRequest (the tier refused the input)."""
        breaker = self.breakers[name]
        if not breaker.allow():
            raise TierFailure(name, "breaker_open", f"tier {name!r} is failing; not called for "
                              f"{breaker.retry_in_s():.1f} s more (circuit open)")
        timeout = self.cfg.tier(name).timeout_s
        for attempt in range(self.cfg.reliability.retries + 1):
            resp = self.handles[name].generate.remote(req)
            try:
                gen = await asyncio.wait_for(resp, timeout)
            except asyncio.CancelledError:  # the client gave up: stop the tier's work too
                resp.cancel()
                raise
            except InvalidInput as e:
                raise BadRequest(_message(e)) from None
            except asyncio.TimeoutError:
                resp.cancel()
                failure = TierFailure(name, "timeout", f"tier {name!r} timed out after {timeout:g} s")
            except BackPressureError:
                # Not a sign of ill health: the breaker is left alone.
                raise TierFailure(name, "overloaded", f"tier {name!r} is overloaded (its queue is full)") from None
            except RayActorError as e:  # the replica died mid-call; generation is idempotent, so retry
                if attempt < self.cfg.reliability.retries:
                    log.warning("tier %s replica died (%s); retrying", name, type(e).__name__)
                    self.metrics.inc("cascade_tier_retries", tier=name)
                    continue
                failure = TierFailure(name, "replica_died", f"tier {name!r} replica died during the call")
            except DeploymentUnavailableError:
                failure = TierFailure(name, "unavailable", f"tier {name!r} has no healthy replica")
            except Exception as e:  # noqa: BLE001  (a tier bug: reported by type, details in the log)
                log.warning("tier %s failed: %r", name, e)
                failure = TierFailure(name, "error", f"tier {name!r} failed: {type(e).__name__}")
            else:
                breaker.success()
                return gen
            breaker.failure()
            raise failure
        raise AssertionError("unreachable")

    async def run(self, plan: Plan, stream_last: bool = False) -> Outcome:
        """Walks the cascade. With ``stream_last`` the tier that will answer unconditionally is not
        called; the caller streams it (Outcome.answer is None then). A failing later tier degrades
        to the earlier tier's answer when the policy allows it."""
        results: list[pb.TierResult] = []
        first_score = math.nan
        prev: Optional[tuple[str, Generation]] = None
        for k, name in enumerate(plan.tiers):
            final = plan.forced or k == len(plan.tiers) - 1
            if final and stream_last:
                return Outcome(None, name, k > 0, first_score, results, prev=prev)
            t0 = time.perf_counter()
            try:
                gen = await self.call(name, plan.request)
            except TierFailure as f:
                self.metrics.inc("cascade_tier_errors", tier=name, reason=f.reason)
                if prev is None or self.cfg.reliability.on_tier_failure != "degrade":
                    raise
                self.metrics.inc("cascade_fallbacks", tier=name, reason=f.reason)
                return Outcome(prev[1], prev[0], True, first_score, results, degraded=f"{f}; answered by {prev[0]!r}")
            ms = (time.perf_counter() - t0) * 1e3
            self.metrics.observe("cascade_tier_latency_ms", ms, tier=name)
            self.metrics.inc("cascade_tier_tokens", gen.prompt_tokens, tier=name, kind="prompt")
            self.metrics.inc("cascade_tier_tokens", gen.completion_tokens, tier=name, kind="completion")
            score = self._score(name, gen)
            if k == 0 and score is not None:
                first_score = score
            results.append(self._tier_result(plan, name, gen, score, ms))
            if final or not self._defer(plan, score):
                return Outcome(gen, name, k > 0, first_score, results)
            self.metrics.inc("cascade_deferrals", tier=name)
            prev = (name, gen)
        raise AssertionError("unreachable: the last tier always answers")

    def response(self, plan: Plan, out: Outcome, text: str, t0: float, request_id: str) -> pb.GenerateResponse:
        usage = pb.Usage(prompt_tokens=sum(t.prompt_tokens for t in out.results),
                         completion_tokens=sum(t.completion_tokens for t in out.results))
        return pb.GenerateResponse(
            text=text, tier=out.answered_by, deferred=out.deferred, score=out.score,
            threshold=self.threshold if plan.threshold is None else plan.threshold, rule=self.rule, usage=usage, tiers=out.results,
            total_latency_ms=(time.perf_counter() - t0) * 1e3, request_id=request_id,
            degraded=bool(out.degraded), degraded_reason=out.degraded,
        )


def _message(e: BaseException) -> str:
    """The message of an exception raised in another replica, without Ray's remote traceback."""
    cause = getattr(e, "cause", None)
    return str(cause if isinstance(cause, BaseException) else e)


def _request_id() -> str:
    return serve.context._get_serve_request_context().request_id


def _tier_refusal(f: TierFailure, retry_after_ms: int) -> Refusal:
    if f.reason == "overloaded":
        return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{f}; retry after {retry_after_ms} ms", "overloaded",
                       [("retry-after-ms", str(retry_after_ms))])
    return Refusal(grpc.StatusCode.UNAVAILABLE, str(f), f"tier_{f.reason}")


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Router:
    """gRPC ingress: auth, admission control, validation, the cascade, metrics."""

    def __init__(self, config: dict[str, Any], tiers: dict[str, DeploymentHandle]):
        cfg = parse_config(config)
        self.metrics = Metrics()
        self.core = CascadeCore(cfg, tiers, self.metrics)
        self.limits = cfg.limits
        self.digests = [bytes.fromhex(d) for d in cfg.server.auth.digests()]
        self.inflight = 0
        self.recent = RecentShare(200)  # deferred? over the last cascade requests (for `cascade status`)
        self.recent_degraded = RecentShare(200)
        self.counts: dict[str, int] = {}
        self.metrics.set("cascade_inflight", 0)

    # ---- gates -----------------------------------------------------------------------------
    def _authorized(self, grpc_context) -> bool:
        if not self.digests:
            return True
        value = dict(grpc_context.invocation_metadata()).get("authorization", "")
        scheme, _, token = value.partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for d in self.digests:  # compare with every digest, constant time each: no early exit
            ok |= hmac.compare_digest(presented, d)
        return ok and scheme.lower() == "bearer"

    def _admit(self, grpc_context) -> None:
        if not self._authorized(grpc_context):
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or invalid bearer token: send metadata `authorization: Bearer <token>`",
                          "unauthenticated")
        if self.inflight > self.limits.max_inflight:
            ms = self.limits.retry_after_ms
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"overloaded: {self.inflight - 1} requests in flight on this router replica (limit "
                          f"{self.limits.max_inflight}); retry after {ms} ms", "overloaded",
                          [("retry-after-ms", str(ms))])

    def _finish(self, method: str, code: grpc.StatusCode, tier: str, t0: float) -> None:
        self.metrics.inc("cascade_requests", method=method, code=code.name, tier=tier)
        self.metrics.observe("cascade_request_latency_ms", (time.perf_counter() - t0) * 1e3, method=method,
                             code=code.name)
        self.counts[code.name] = self.counts.get(code.name, 0) + 1

    def _answered(self, plan: Plan, out: Outcome) -> None:
        if plan.forced:
            return
        if not math.isnan(out.score):
            self.metrics.observe("cascade_uncertainty", -out.score, rule=self.core.rule)
        self.recent.add(out.deferred)
        self.recent_degraded.add(bool(out.degraded))
        self.metrics.set("cascade_deferral_share", self.recent.share)
        if out.answered_by != self.core.names[-1]:
            self.metrics.inc("cascade_strong_calls_avoided")

    def _refuse(self, grpc_context, method: str, r: Refusal, t0: float) -> pb.GenerateResponse:
        if r.reason in ("invalid_argument", "unauthenticated", "overloaded"):
            self.metrics.inc("cascade_rejections", reason=r.reason)
        log.info("refused %s: %s", r.code.name, r)  # never the request's metadata (it may hold a token)
        grpc_context.set_code(r.code)
        grpc_context.set_details(str(r))
        if r.trailing:
            grpc_context.set_trailing_metadata(r.trailing)
        self._finish(method, r.code, "", t0)
        return pb.GenerateResponse()

    async def _prepare(self, request, grpc_context) -> Plan:
        self._admit(grpc_context)
        try:
            return self.core.plan(request)
        except BadRequest as e:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e), "invalid_argument") from None

    async def _run(self, plan: Plan, stream_last: bool = False) -> Outcome:
        try:
            return await self.core.run(plan, stream_last)
        except BadRequest as e:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e), "invalid_argument") from None
        except TierFailure as f:
            raise _tier_refusal(f, self.limits.retry_after_ms) from None

    def _enter(self) -> float:
        self.inflight += 1
        self.metrics.set("cascade_inflight", self.inflight)
        return time.perf_counter()

    def _exit(self) -> None:
        self.inflight -= 1
        self.metrics.set("cascade_inflight", self.inflight)

    # ---- RPCs --------------------------------------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, grpc_context) -> pb.GenerateResponse:
        t0 = self._enter()
        try:
            plan = await self._prepare(request, grpc_context)
            out = await self._run(plan)
        except Refusal as r:
            return self._refuse(grpc_context, "Generate", r, t0)
        except asyncio.CancelledError:
            self._cancelled("Generate", t0)
            raise
        except Exception as e:  # noqa: BLE001  a bug: a short status, the traceback only in the log
            log.exception("unexpected error")
            return self._refuse(grpc_context, "Generate", Refusal(
                grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); request id {_request_id()}",
                "internal"), t0)
        finally:
            self._exit()
        self._answered(plan, out)
        self._finish("Generate", grpc.StatusCode.OK, out.answered_by, t0)
        log.info("answered by %s deferred=%s score=%.4f%s", out.answered_by, out.deferred, out.score,
                 f" degraded: {out.degraded}" if out.degraded else "")
        return self.core.response(plan, out, out.answer.text, t0, _request_id())

    def _cancelled(self, method: str, t0: float) -> None:
        self.metrics.inc("cascade_cancelled", method=method)
        self._finish(method, grpc.StatusCode.CANCELLED, "", t0)
        log.info("cancelled by the client after %.0f ms (deadline or cancel); tier work cancelled",
                 (time.perf_counter() - t0) * 1e3)

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context) -> AsyncIterator[pb.GenerateResponse]:
        t0 = self._enter()
        sent = False
        try:
            plan = await self._prepare(request, grpc_context)
            out = await self._run(plan, stream_last=True)
            name = out.answered_by
            if out.answer is not None:  # an earlier tier was confident (or the later one failed): complete
                sent = True
                yield pb.GenerateResponse(text=out.answer.text, tier=name)
            else:
                t1 = time.perf_counter()
                gen = None
                try:
                    async for item in self.core.handles[name].options(stream=True).stream.remote(plan.request):
                        if isinstance(item, Generation):
                            gen = item
                        else:
                            sent = True
                            yield pb.GenerateResponse(text=item, tier=name)
                except InvalidInput as e:
                    raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, _message(e), "invalid_argument") from None
                except (RayActorError, DeploymentUnavailableError, BackPressureError) as e:
                    reason = "overloaded" if isinstance(e, BackPressureError) else "unavailable"
                    f = TierFailure(name, reason, f"tier {name!r} failed while streaming: {type(e).__name__}")
                    self.metrics.inc("cascade_tier_errors", tier=name, reason=reason)
                    if sent or out.prev is None or self.core.cfg.reliability.on_tier_failure != "degrade":
                        raise _tier_refusal(f, self.limits.retry_after_ms) from None
                    self.metrics.inc("cascade_fallbacks", tier=name, reason=reason)
                    out.answered_by, out.answer = out.prev[0], out.prev[1]
                    out.degraded = f"{f}; answered by {out.prev[0]!r}"
                    sent = True
                    yield pb.GenerateResponse(text=out.answer.text, tier=out.answered_by)
                if gen is not None:
                    ms = (time.perf_counter() - t1) * 1e3
                    score = self.core._score(name, gen)
                    if not out.results and score is not None:  # the first tier answered: its score is the score
                        out.score = score
                    out.results.append(self.core._tier_result(plan, name, gen, score, ms))
                    self.metrics.observe("cascade_tier_latency_ms", ms, tier=name)
        except Refusal as r:
            yield self._refuse(grpc_context, "GenerateStream", r, t0)
            return
        except asyncio.CancelledError:
            self._cancelled("GenerateStream", t0)
            raise
        except Exception as e:  # noqa: BLE001
            log.exception("unexpected error")
            yield self._refuse(grpc_context, "GenerateStream", Refusal(
                grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); request id {_request_id()}",
                "internal"), t0)
            return
        finally:
            self._exit()
        self._answered(plan, out)
        self._finish("GenerateStream", grpc.StatusCode.OK, out.answered_by, t0)
        final = self.core.response(plan, out, "", t0, _request_id())
        final.finished = True
        yield final

    # ---- operations --------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """This router replica's view, for `cascade status`."""
        return {"replica": serve.get_replica_context().replica_id.unique_id, "inflight": self.inflight,
                "recent_requests": self.recent.n, "deferral_share": self.recent.share,
                "degraded_share": self.recent_degraded.share, "requests_by_code": dict(self.counts),
                "breakers": {n: b.state for n, b in self.core.breakers.items()}}
