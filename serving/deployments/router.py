"""The Router: gRPC ingress that implements cascade.v1.Cascade and applies the deferral rule."""


import asyncio
import hashlib
import hmac
import logging
import math
import time
import json
from contextlib import aclosing
from typing import Any, AsyncIterator, Optional

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.cascade import BadRequest, Cascade, Outcome, Plan, Text, TierFailure, TierRun
from serving.config import parse_config
from serving.deployments.metrics import Metrics
from serving.deployments.tier_client import ServeTierClient
from serving import openai_api as oa
from serving.models import GenerationRequest
from serving.reliability import RecentShare
from serving.service import MalformedRequest
from serving.shadow import ShadowSampler
from serving._proto.cascade.v1 import cascade_pb2 as pb

log = logging.getLogger("ray.serve")  # Serve's replica logger stamps each line with the request id
ROLES = ("system", "user", "assistant")


def _tier_result(plan: Plan, run: TierRun) -> pb.TierResult:
    g = run.generation
    return pb.TierResult(tier=run.tier, text=g.text, score=run.score, latency_ms=run.latency_ms,
                         prompt_tokens=g.prompt_tokens, completion_tokens=g.completion_tokens,
                         token_logprobs=g.logprobs if plan.include_logprobs else [],
                         finish_reason=g.finish_reason, tier_ms=g.tier_ms, decision_tokens=run.decided_at or 0,
                         decided_early=run.decided_early, draft_tokens=g.draft_tokens,
                         draft_accepted_tokens=g.draft_accepted)


class Refusal(Exception):
    """Ends a request with a gRPC status (and optional trailing metadata)."""

    def __init__(self, code: grpc.StatusCode, message: str, reason: str, trailing: tuple = ()):
        super().__init__(message)
        self.code, self.reason, self.trailing = code, reason, list(trailing)


def plan_request(cascade: Cascade, limits, r: pb.GenerateRequest) -> Plan:
    """Validates a request (BadRequest names the field) and maps it to the walk's Plan."""
    lim = limits
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
    if r.force_tier and r.force_tier not in cascade.names:
        raise BadRequest(f"`force_tier` {r.force_tier!r} is not a tier; known tiers: {cascade.names}")
    threshold = None  # the configured one (or the budget controller's), per boundary
    if r.HasField("threshold"):
        if not math.isfinite(r.threshold):
            raise BadRequest(f"`threshold` must be a finite number, got {r.threshold}")
        threshold = r.threshold
    req = GenerationRequest(
        prompt=r.prompt, messages=[{"role": m.role, "content": m.content} for m in r.messages],
        max_new_tokens=r.max_new_tokens or None, embed=cascade.needs_embedding,
    )
    tiers = [r.force_tier] if r.force_tier else cascade.names
    return Plan(req, tiers, bool(r.force_tier), threshold, r.include_logprobs)


def _receipt(r) -> pb.Receipt:
    return pb.Receipt(lines=[pb.ReceiptLine(tier=x.tier, prompt_tokens=x.prompt_tokens,
                                            completion_tokens=x.completion_tokens, cost=x.cost, discarded=x.discarded)
                             for x in r.lines],
                      total=r.total, strong_tier=r.strong_tier, strong_only=r.strong_only,
                      strong_only_prompt_tokens=r.strong_only_prompt_tokens,
                      strong_only_completion_tokens=r.strong_only_completion_tokens,
                      strong_only_estimated=r.strong_only_estimated)


def response(cascade: Cascade, plan: Plan, out: Outcome, text: str, t0: float, request_id: str) -> pb.GenerateResponse:
    results = [_tier_result(plan, r) for r in out.runs]
    usage = pb.Usage(prompt_tokens=sum(t.prompt_tokens for t in results),
                     completion_tokens=sum(t.completion_tokens for t in results))
    return pb.GenerateResponse(
        text=text, tier=out.answered_by, deferred=out.deferred, score=out.score,
        threshold=cascade.threshold if out.threshold is None else out.threshold,
        rule=cascade.rule, usage=usage, tiers=results, total_latency_ms=(time.perf_counter() - t0) * 1e3,
        request_id=request_id, degraded=bool(out.degraded), degraded_reason=out.degraded,
        receipt=_receipt(out.receipt), load_shed=out.load_shed,
    )


def _request_id() -> str:
    return serve.context._get_serve_request_context().request_id


http_app = FastAPI(title="cascade: OpenAI-compatible API", docs_url=None, redoc_url=None)


# Plain functions rather than class-based views (Serve's rewriting of method signatures did not reach
# FastAPI's dependency analysis here: the `request` parameter was taken for a query parameter). The
# replica's Router is found through a module attribute: this module's own globals travel by value with
# the pickled deployment, a module imported by name does not.
@http_app.get("/v1/models")
async def _models(request: Request):
    return await oa.REPLICA.router.list_models(request)


@http_app.post("/v1/chat/completions")
async def _chat_completions(request: Request):
    return await oa.REPLICA.router._http(request, oa.ChatRequest, "ChatCompletions")


@http_app.post("/v1/completions")
async def _completions(request: Request):
    return await oa.REPLICA.router._http(request, oa.CompletionRequest, "Completions")


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(http_app)
class Router:
    """The ingress for gRPC (Serve's gRPC proxy) and HTTP (Serve's HTTP proxy: the OpenAI API): auth,
    admission control, validation, metrics; the cascade walk does the rest."""

    def __init__(self, config: dict[str, Any], tiers: dict[str, DeploymentHandle]):
        cfg = parse_config(config)
        self.metrics = Metrics()
        self.client = ServeTierClient(cfg, tiers, self.metrics)
        self.cascade = Cascade(cfg, self.client, self.metrics)
        self.shadow = ShadowSampler(cfg, self.cascade, self.client, self.metrics, self.cascade.inflight.__getitem__)
        self.tiers = tiers
        self.name = cfg.server.app_name
        self.limits = cfg.limits
        self.digests = [bytes.fromhex(d) for d in cfg.server.auth.digests()]
        self.inflight = 0
        self.recent = RecentShare(200)  # deferred? over the last cascade requests (for `cascade status`)
        self.recent_degraded = RecentShare(200)
        self.counts: dict[str, int] = {}
        self.metrics.set("cascade_inflight", 0)
        oa.REPLICA.router = self  # the HTTP routes below call into this replica's Router

    # ---- gates -----------------------------------------------------------------------------
    def _authorized(self, authorization: str) -> bool:
        """``authorization``: the gRPC metadata or HTTP header value ("Bearer <token>")."""
        if not self.digests:
            return True
        scheme, _, token = authorization.partition(" ")
        presented = hashlib.sha256(token.strip().encode()).digest()
        ok = False
        for d in self.digests:  # compare with every digest, constant time each: no early exit
            ok |= hmac.compare_digest(presented, d)
        return ok and scheme.lower() == "bearer"

    def _gate(self, authorization: str) -> None:
        """Auth, then admission control (both fronts)."""
        if not self._authorized(authorization):
            raise Refusal(grpc.StatusCode.UNAUTHENTICATED,
                          "missing or invalid bearer token: send metadata `authorization: Bearer <token>`",
                          "unauthenticated")
        if self.inflight > self.limits.max_inflight:
            ms = self.limits.retry_after_ms
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"overloaded: {self.inflight - 1} requests in flight on this router replica (limit "
                          f"{self.limits.max_inflight}); retry after {ms} ms", "overloaded",
                          [("retry-after-ms", str(ms))])

    def _plan(self, request, stream: bool = False) -> Plan:
        try:
            plan = plan_request(self.cascade, self.limits, request)
        except BadRequest as e:
            raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e), "invalid_argument") from None
        plan.stream = stream
        return plan

    def _prepare(self, request, grpc_context, stream: bool = False) -> Plan:
        self._gate(dict(grpc_context.invocation_metadata()).get("authorization", ""))
        return self._plan(request, stream)

    def _finish(self, method: str, code: grpc.StatusCode, tier: str, t0: float) -> None:
        self.metrics.inc("cascade_requests", method=method, code=code.name, tier=tier)
        self.metrics.observe("cascade_request_latency_ms", (time.perf_counter() - t0) * 1e3, method=method,
                             code=code.name)
        self.counts[code.name] = self.counts.get(code.name, 0) + 1

    def _answered(self, method: str, plan: Plan, out: Outcome, t0: float) -> None:
        self._finish(method, grpc.StatusCode.OK, out.answered_by, t0)
        log.info("answered by %s deferred=%s score=%.4f%s", out.answered_by, out.deferred, out.score,
                 f" degraded: {out.degraded}" if out.degraded else "")
        if plan.forced:
            return
        if not math.isnan(out.score):
            self.metrics.observe("cascade_uncertainty", -out.score, rule=self.cascade.rule)
        self.recent.add(out.deferred)
        self.recent_degraded.add(bool(out.degraded))
        self.metrics.set("cascade_deferral_share", self.recent.share)
        if out.answered_by != self.cascade.names[-1]:
            self.metrics.inc("cascade_strong_calls_avoided")
        self.shadow.offer(plan, out)  # off the request path: its task starts after this handler hands the answer on

    def _refused(self, method: str, r: Refusal, t0: float) -> None:
        if r.reason in ("invalid_argument", "unauthenticated", "overloaded"):
            self.metrics.inc("cascade_rejections", reason=r.reason)
        log.info("refused %s: %s", r.code.name, r)  # never the request's metadata (it may hold a token)
        self._finish(method, r.code, "", t0)

    def _refuse(self, grpc_context, method: str, r: Refusal, t0: float) -> pb.GenerateResponse:
        self._refused(method, r, t0)
        grpc_context.set_code(r.code)
        grpc_context.set_details(str(r))
        if r.trailing:
            grpc_context.set_trailing_metadata(r.trailing)
        return pb.GenerateResponse()

    def _refusal(self, e: Exception) -> Refusal:
        """The status for an error the walk raised."""
        if isinstance(e, Refusal):
            return e
        if isinstance(e, BadRequest):
            return Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e), "invalid_argument")
        if isinstance(e, TierFailure):
            ms = self.limits.retry_after_ms
            if e.reason == "overloaded":
                return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, f"{e}; retry after {ms} ms", "overloaded",
                               [("retry-after-ms", str(ms))])
            return Refusal(grpc.StatusCode.UNAVAILABLE, str(e), f"tier_{e.reason}")
        log.exception("unexpected error")  # a bug: a short status, the traceback only in the log
        return Refusal(grpc.StatusCode.INTERNAL, f"internal error ({type(e).__name__}); request id {_request_id()}",
                       "internal")

    def _enter(self) -> float:
        self.inflight += 1
        self.metrics.set("cascade_inflight", self.inflight)
        return time.perf_counter()

    def _exit(self) -> None:
        self.inflight -= 1
        self.metrics.set("cascade_inflight", self.inflight)

    def _cancelled(self, method: str, t0: float) -> None:
        self.metrics.inc("cascade_cancelled", method=method)
        self._finish(method, grpc.StatusCode.CANCELLED, "", t0)
        log.info("cancelled by the client after %.0f ms (deadline or cancel); tier work cancelled",
                 (time.perf_counter() - t0) * 1e3)

    # ---- RPCs: thin adapters over the one walk ----------------------------------------------------
    async def Generate(self, request: pb.GenerateRequest, grpc_context) -> pb.GenerateResponse:
        t0 = self._enter()
        try:
            plan = self._prepare(request, grpc_context)
            out = await self.cascade.run(plan)
        except asyncio.CancelledError:
            self._cancelled("Generate", t0)
            raise
        except Exception as e:  # noqa: BLE001
            return self._refuse(grpc_context, "Generate", self._refusal(e), t0)
        finally:
            self._exit()
        self._answered("Generate", plan, out, t0)
        return response(self.cascade, plan, out, out.answer.text, t0, _request_id())

    async def GenerateStream(self, request: pb.GenerateRequest, grpc_context) -> AsyncIterator[pb.GenerateResponse]:
        """Text as soon as it is certain to be part of the answer, then a last message with
        ``finished: true`` and the metadata."""
        t0 = self._enter()
        out = None
        try:
            plan = self._prepare(request, grpc_context, stream=True)
            async with aclosing(self.cascade.walk(plan)) as events:
                async for ev in events:
                    if isinstance(ev, Text):
                        yield pb.GenerateResponse(text=ev.text, tier=ev.tier)
                    else:
                        out = ev
        except asyncio.CancelledError:
            self._cancelled("GenerateStream", t0)
            raise
        except Exception as e:  # noqa: BLE001
            yield self._refuse(grpc_context, "GenerateStream", self._refusal(e), t0)
            return
        finally:
            self._exit()
        final = response(self.cascade, plan, out, "", t0, _request_id())
        final.finished = True
        try:
            yield final
        finally:  # once the last message is handed on (shadow sampling), even if the caller stops reading there
            self._answered("GenerateStream", plan, out, t0)

    # ---- HTTP: the OpenAI API, thin adapters over the same gates and walk ------------------------------
    async def list_models(self, request: Request):
        if not self._authorized(request.headers.get("authorization", "")):
            return self._http_error("models", Refusal(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer "
                                                      "token: send `Authorization: Bearer <token>`", "unauthenticated"),
                                    time.perf_counter())
        return JSONResponse(oa.models(self.name, self.cascade.names))

    def _http_error(self, method: str, r: Refusal, t0: float, param: Optional[str] = None) -> JSONResponse:
        self._refused(method, r, t0)
        code = "DEADLINE_EXCEEDED" if r.reason == "tier_timeout" else r.code.name  # HTTP has 504 for it
        status, body = oa.error_body(code, oa.http_message(str(r)), param)
        headers = {}
        if r.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            headers["Retry-After"] = str(max(1, math.ceil(self.limits.retry_after_ms / 1000)))
        return JSONResponse(body, status_code=status, headers=headers)

    async def _http(self, request: Request, kind, method: str):
        t0 = self._enter()
        streaming = False
        try:
            self._gate(request.headers.get("authorization", ""))
            req = oa.parse(kind, await request.body())
            plan = self._plan(oa.to_grpc(req, self.name, self.cascade.names), stream=req.stream)
            if req.stream:
                streaming = True  # the event stream owns the in-flight slot from here
                return StreamingResponse(self._sse(req, plan, method, t0), media_type="text/event-stream")
            out = await self.cascade.run(plan)
        except oa.BadHTTPRequest as e:
            return self._http_error(method, Refusal(grpc.StatusCode.INVALID_ARGUMENT, str(e), "invalid_argument"),
                                    t0, e.param)
        except asyncio.CancelledError:
            self._cancelled(method, t0)
            raise
        except Exception as e:  # noqa: BLE001
            return self._http_error(method, self._refusal(e), t0)
        finally:
            if not streaming:
                self._exit()
        self._answered(method, plan, out, t0)
        resp = response(self.cascade, plan, out, out.answer.text, t0, _request_id())
        return JSONResponse(oa.completion(req, resp, out.answer.text))

    async def _sse(self, req, plan: Plan, method: str, t0: float) -> AsyncIterator[bytes]:
        rid = _request_id()
        out = None
        try:
            yield oa.sse_chunk(req, rid, first=True)
            async with aclosing(self.cascade.walk(plan)) as events:
                async for ev in events:
                    if isinstance(ev, Text):
                        yield oa.sse_chunk(req, rid, ev.text)
                    else:
                        out = ev
            resp = response(self.cascade, plan, out, "", t0, rid)
            yield oa.sse_chunk(req, rid, final=resp)
            if (req.stream_options or {}).get("include_usage"):
                yield oa.sse_chunk(req, rid, usage_only=resp)
            yield b"data: [DONE]\n\n"
            self._answered(method, plan, out, t0)
        except asyncio.CancelledError:  # the client went away: the walk's tier calls are cancelled with it
            self._cancelled(method, t0)
            raise
        except Exception as e:  # noqa: BLE001  (after the headers went out: an error event)
            r = self._refusal(e)
            self._refused(method, r, t0)
            yield f"data: {json.dumps(oa.error_body(r.code.name, oa.http_message(str(r)))[1])}\n\n".encode()
        finally:
            self._exit()

    # ---- operations --------------------------------------------------------------------------
    async def stats(self) -> dict[str, Any]:
        """This router replica's view, for `cascade status`: its counters, breakers, and one replica of
        each tier's engine stats."""
        engines = {}
        for name, h in self.tiers.items():
            try:
                engines[name] = await asyncio.wait_for(h.stats.remote(), 5)
            except Exception as e:  # noqa: BLE001  (status must show what it can)
                engines[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        return {"replica": serve.get_replica_context().replica_id.unique_id, "inflight": self.inflight,
                "recent_requests": self.recent.n, "deferral_share": self.recent.share,
                "degraded_share": self.recent_degraded.share, "requests_by_code": dict(self.counts),
                "breakers": {n: b.state for n, b in self.client.breakers.items()}, "engines": engines,
                "costs": self.cascade.costs.as_dict(), "tier_inflight": dict(self.cascade.inflight),
                "shadow": self.shadow.stats()}
