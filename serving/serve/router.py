"""The Router deployment: the ingress of both fronts — gRPC (``cascade.v1.Cascade`` through Serve's
gRPC proxy) and HTTP (the OpenAI API through Serve's HTTP proxy). It gates (auth, admission),
dispatches (front mapping -> the cascade walk -> front mapping) and records (metrics, logs, shadow
samples); the mappings are ``serving.fronts``, the policy is ``serving.core``."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving import compat
from serving.config import parse_config
from serving.core.breaker import RecentShare
from serving.core.errors import Overloaded, RequestRefused, Unauthenticated
from serving.core.request import CascadeRequest, Outcome, Text
from serving.core.walk import Cascade
from serving.fronts import grpc_api, openai_api
from serving.fronts.outcome import response_fields
from serving.fronts.status import INTERNAL, status_of
from serving.fronts.status import retry_after_ms as retry_hint
from serving.observability.shadow import ShadowSampler
from serving.observability.status import RouterStatus
from serving.serve.metrics import Metrics
from serving.serve.tier import TierServer
from serving.serve.tier_client import ServeTierClient

log = logging.getLogger("ray.serve")  # Serve's replica logger stamps each line with the request id
http_app = FastAPI(title="cascade: OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)


@http_app.exception_handler(StarletteHTTPException)
async def _no_route(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """What FastAPI answers itself (an unknown path, a method a route does not take), as OpenAI's error JSON."""
    kind = "method" if exc.status_code == 405 else "not_found"
    what = f"{request.method} {request.url.path[:200]}"
    e = RequestRefused(
        kind, f"{what}: {exc.detail}; the routes are POST /v1/chat/completions, POST /v1/completions, GET /v1/models"
    )
    status, payload = openai_api.error(e)
    return JSONResponse(payload, status_code=status, headers=getattr(exc, "headers", None))


def _request_id() -> str:
    return compat.serve_request_id()


@serve.deployment(ray_actor_options={"num_cpus": 0})
@serve.ingress(http_app)
class Router:
    async def __init__(self, config: dict[str, Any], tiers: dict[str, DeploymentHandle]):
        cfg = parse_config(config)
        compat.reuseaddr_on_direct_ingress()
        compat.check_serve_request_context()
        self.metrics = Metrics()
        # router.colocate_with: the first tier's engine in this process (built and warmed before the replica runs)
        name = cfg.router.colocate_with
        self.local = {name: await TierServer.start(cfg.tier(name).model_dump(mode="json"))} if name else {}
        self.client = ServeTierClient(cfg, tiers, self.metrics, self.local)
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

    def _gate(self, authorization: str, how: str) -> None:
        """Auth, then admission control (both fronts); ``how`` says how a client sends its token."""
        if not self._authorized(authorization):
            raise Unauthenticated(f"missing or invalid bearer token: send {how}")
        if self.inflight > self.limits.max_inflight:
            ms = self.limits.retry_after_ms
            raise Overloaded(
                f"overloaded: {self.inflight - 1} requests in flight on this router replica (limit "
                f"{self.limits.max_inflight}); retry after {ms} ms",
                ms,
            )

    def _enter(self) -> float:
        self.inflight += 1
        self.metrics.set("cascade_inflight", self.inflight)
        return time.perf_counter()

    def _exit(self) -> None:
        self.inflight -= 1
        self.metrics.set("cascade_inflight", self.inflight)

    # ---- records -----------------------------------------------------------------------------
    def _finish(self, method: str, code: str, tier: str, t0: float) -> None:
        self.metrics.inc("cascade_requests", method=method, code=code, tier=tier)
        self.metrics.observe("cascade_request_latency_ms", (time.perf_counter() - t0) * 1e3, method=method, code=code)
        self.counts[code] = self.counts.get(code, 0) + 1

    def _answered(self, method: str, req: CascadeRequest, out: Outcome, t0: float) -> None:
        self._finish(method, "OK", out.answered_by, t0)
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
        self.shadow.offer(req, out)  # off the request path: its task starts after this handler hands the answer on

    def _refused(self, method: str, e: Exception, t0: float) -> str:
        """Records a request that ended with an error; returns the message the client gets."""
        status = status_of(e)
        message = str(e)
        if status is INTERNAL:  # a bug: a short status, the traceback only in the log
            log.error("unexpected error", exc_info=e)
            message = f"internal error ({type(e).__name__}); request id {_request_id()}"
        elif status.reason in ("invalid_argument", "unauthenticated", "overloaded", "too_large", "body_timeout"):
            self.metrics.inc("cascade_rejections", reason=status.reason)
        log.info("refused %s: %s", status.grpc, message)  # never the request's metadata (it may hold a token)
        self._finish(method, status.grpc, "", t0)
        return message

    def _cancelled(self, method: str, t0: float) -> None:
        self.metrics.inc("cascade_cancelled", method=method)
        self._finish(method, "CANCELLED", "", t0)
        log.info(
            "cancelled by the client after %.0f ms (deadline or cancel); tier work cancelled",
            (time.perf_counter() - t0) * 1e3,
        )

    def _fields(self, req: CascadeRequest, out: Outcome, t0: float, text=None) -> dict[str, Any]:
        return response_fields(
            req,
            out,
            rule=self.cascade.rule,
            default_threshold=self.cascade.threshold,
            latency_ms=(time.perf_counter() - t0) * 1e3,
            request_id=_request_id(),
            text=text,
        )

    # ---- gRPC: thin adapters over the one walk ----------------------------------------------------
    def _grpc_requests(self, request, grpc_context, stream: bool) -> list[CascadeRequest]:
        self._gate(
            dict(grpc_context.invocation_metadata()).get("authorization", ""),
            "metadata `authorization: Bearer <token>`",
        )
        return grpc_api.to_requests(
            request,
            tier_names=self.cascade.names,
            limits=self.limits,
            embed=self.cascade.needs_embedding,
            stream=stream,
        )

    def _grpc_error(self, grpc_context, method: str, e: Exception, t0: float):
        message = self._refused(method, e, t0)
        code, details, trailing = grpc_api.error(e, retry_hint(e, self.limits.retry_after_ms))
        grpc_context.set_code(getattr(grpc.StatusCode, code))
        grpc_context.set_details(message if code == "INTERNAL" else details)
        if trailing:
            grpc_context.set_trailing_metadata(trailing)
        return grpc_api.pb.GenerateResponse()

    async def Generate(self, request, grpc_context):
        t0 = self._enter()
        try:
            reqs = self._grpc_requests(request, grpc_context, stream=False)
            outs = await self._run_all(reqs)
        except asyncio.CancelledError:
            self._cancelled("Generate", t0)
            raise
        except Exception as e:
            return self._grpc_error(grpc_context, "Generate", e, t0)
        finally:
            self._exit()
        for req, out in zip(reqs, outs):
            self._answered("Generate", req, out, t0)
        fields = [self._fields(req, out, t0) for req, out in zip(reqs, outs)]
        return grpc_api.to_response(fields[0], choices=fields)

    async def _run_all(self, reqs: list[CascadeRequest]) -> list[Outcome]:
        """The walks of one request's answers, side by side (n > 1: each answer its own walk)."""
        if len(reqs) == 1:
            return [await self.cascade.run(reqs[0])]
        return list(await asyncio.gather(*(self.cascade.run(r) for r in reqs)))

    async def GenerateStream(self, request, grpc_context) -> AsyncIterator:
        """Text as soon as it is certain to be part of the answer, then a last message with
        ``finished: true`` and the metadata."""
        t0 = self._enter()
        out = None
        try:
            [req] = self._grpc_requests(request, grpc_context, stream=True)
            async with aclosing(self.cascade.walk(req)) as events:
                async for ev in events:
                    if isinstance(ev, Text):
                        yield grpc_api.text_message(ev.tier, ev.text)
                    else:
                        out = ev
        except asyncio.CancelledError:
            self._cancelled("GenerateStream", t0)
            raise
        except Exception as e:
            yield self._grpc_error(grpc_context, "GenerateStream", e, t0)
            return
        finally:
            self._exit()
        try:
            yield grpc_api.to_response(self._fields(req, out, t0, text=""), finished=True)
        finally:  # once the last message is handed on (shadow sampling), even if the caller stops reading there
            self._answered("GenerateStream", req, out, t0)

    # ---- HTTP: the OpenAI API, thin adapters over the same gates and walk ------------------------------
    @http_app.get("/v1/models")
    async def list_models(self, request: Request) -> Response:
        if not self._authorized(request.headers.get("authorization", "")):
            e = Unauthenticated("missing or invalid bearer token: send `Authorization: Bearer <token>`")
            return self._http_error("models", e, time.perf_counter())
        return JSONResponse(openai_api.models(self.name, self.cascade.names))

    @http_app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._http(request, openai_api.ChatRequest, "ChatCompletions")

    @http_app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._http(request, openai_api.CompletionRequest, "Completions")

    def _http_error(self, method: str, e: Exception, t0: float, body=None) -> JSONResponse:
        message = self._refused(method, e, t0)
        status, payload = openai_api.error(e, body, message)
        headers = {}
        if (ms := retry_hint(e, self.limits.retry_after_ms)) is not None:
            headers["Retry-After"] = str(max(1, math.ceil(ms / 1000)))
        return JSONResponse(payload, status_code=status, headers=headers)

    async def _http(self, request: Request, kind, method: str) -> Response:
        t0 = self._enter()
        streaming, body = False, None
        try:
            self._gate(request.headers.get("authorization", ""), "`Authorization: Bearer <token>`")
            body = openai_api.parse(kind, await self._body(request, t0))
            call = openai_api.to_call(
                body,
                cascade_name=self.name,
                tier_names=self.cascade.names,
                limits=self.limits,
                embed=self.cascade.needs_embedding,
            )
            if body.stream:
                streaming = True  # the event stream owns the in-flight slot from here
                return StreamingResponse(self._sse(call, method, t0), media_type="text/event-stream")
            outs = await self._run_all(call.requests)
            prompt_lps = await self._prompt_logprobs(call) if call.echo and call.logprobs else None
        except asyncio.CancelledError:
            self._cancelled(method, t0)
            raise
        except Exception as e:
            return self._http_error(method, e, t0, body)
        finally:
            if not streaming:
                self._exit()
        for req, out in zip(call.requests, outs):
            self._answered(method, req, out, t0)
        fields = [self._fields(req, out, t0) for req, out in zip(call.requests, outs)]
        return JSONResponse(openai_api.completion(call, outs, fields, prompt_lps))

    async def _body(self, request: Request, t0: float) -> bytes:
        """The request's body, bounded: at most ``limits.max_request_bytes`` (413: refused on its Content-Length
        before a byte is read, or as soon as a body without one grows past it) and all of it within
        ``limits.http_body_timeout_s`` of the request's start (408: a slow or stalled sender)."""
        openai_api.check_content_type(request.headers.get("content-type"))
        limit = self.limits.max_request_bytes
        too_large = f"is over the limit of {limit} bytes (limits.max_request_bytes)"
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestRefused("too_large", f"{declared[:40]} {too_large}", "content-length")
        chunks, size = [], 0
        budget = self.limits.http_body_timeout_s
        try:
            async with asyncio.timeout(max(budget - (time.perf_counter() - t0), 0.0)):
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        raise RequestRefused("too_large", f"the body {too_large}")
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestRefused(
                "body_timeout",
                f"the body did not arrive within {budget:g} s (limits.http_body_timeout_s); {size} bytes came",
            ) from None
        return b"".join(chunks)

    async def _prompt_logprobs(self, call) -> list:
        """echo + logprobs: each choice's prompt scored by the tier the request names."""
        top = call.requests[0].request.decoding.top_logprobs or 0
        scored = await asyncio.gather(
            *(self.client.call(r.tiers[0], "prompt_logprobs", r.request, top) for r in call.requests)
        )
        return [openai_api.PromptLogprobs(*s) for s in scored]

    async def _sse(self, call, method: str, t0: float) -> AsyncIterator[bytes]:
        rid = _request_id()
        outs: dict[int, Outcome] = {}
        produced, prompt_tokens = 0, 0
        try:
            if call.chat:
                yield openai_api.sse(call, rid, [openai_api.sse_role(call, i) for i in range(len(call.requests))])
            elif call.echo:
                yield openai_api.sse(
                    call,
                    rid,
                    [
                        {"index": i, "text": p, "logprobs": None, "finish_reason": None}
                        for i, p in enumerate(call.prompts)
                    ],
                )
            async for index, ev in self._events(call.requests):
                if isinstance(ev, Text):
                    produced += len(ev.token_ids)
                    prompt_tokens = ev.prompt_tokens or prompt_tokens
                    extra = {}
                    if call.continuous_usage:
                        extra["usage"] = {
                            "prompt_tokens": prompt_tokens,
                            "completion_tokens": produced,
                            "total_tokens": prompt_tokens + produced,
                        }
                    yield openai_api.sse(call, rid, [openai_api.sse_text(call, index, ev)], **extra)
                else:
                    outs[index] = ev
                    fields = self._fields(call.requests[index], ev, t0, text="")
                    yield openai_api.sse(
                        call, rid, [openai_api.sse_final(call, index, ev)], cascade=openai_api.cascade_info(fields)
                    )
            fields = [self._fields(r, outs[i], t0, text="") for i, r in enumerate(call.requests)]
            if call.include_usage:
                yield openai_api.sse(call, rid, [], usage=openai_api.usage([outs[i] for i in range(len(fields))]))
            yield b"data: [DONE]\n\n"
            for i, r in enumerate(call.requests):
                self._answered(method, r, outs[i], t0)
        except asyncio.CancelledError:  # the client went away: the walk's tier calls are cancelled with it
            self._cancelled(method, t0)
            raise
        except Exception as e:
            message = self._refused(method, e, t0)
            yield openai_api.sse_error(openai_api.error(e, call.body, message)[1])
        finally:
            self._exit()

    async def _events(self, reqs: list[CascadeRequest]) -> AsyncIterator[tuple[int, Any]]:
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

    # ---- operations --------------------------------------------------------------------------
    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Co-located with the first tier: its engine's load (the tier's autoscaling policy scales the Router)."""
        return await next(iter(self.local.values())).record_autoscaling_stats() if self.local else {}

    def check_health(self) -> None:
        for t in self.local.values():  # a co-located engine that stopped makes this replica unhealthy
            t.check_health()

    async def stats(self) -> RouterStatus:
        """This router replica's view, for `cascade status`: its counters, breakers, and one replica of
        each tier's engine stats."""
        engines = {name: await t.stats() for name, t in self.local.items()}
        for name, h in self.tiers.items():
            try:
                engines[name] = await asyncio.wait_for(h.stats.remote(), 5)
            except Exception as e:
                engines[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        return RouterStatus(
            replica=serve.get_replica_context().replica_id.unique_id,
            inflight=self.inflight,
            recent_requests=self.recent.n,
            deferral_share=self.recent.share,
            degraded_share=self.recent_degraded.share,
            requests_by_code=dict(self.counts),
            breakers={n: b.state for n, b in self.client.breakers.items()},
            engines=engines,
            costs=self.cascade.costs.as_dict(),
            tier_inflight=dict(self.cascade.inflight),
            shadow=self.shadow.stats(),
        )
