"""The OpenAI API's HTTP exchange over the :class:`CascadeService`, without a web framework (the Router binds
the routes and writes what these return): the body read within its limits, the mapping of ``openai_api``,
unary JSON answers and Server-Sent Events."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from serving.core.errors import RequestRefused, Unauthenticated
from serving.core.request import Outcome, Text
from serving.fronts import openai_api
from serving.fronts.openai_protocol import OpenAIModel, UsageInfo
from serving.fronts.outcome import merged
from serving.fronts.service import CascadeService

ROUTES = "the routes are POST /v1/chat/completions, POST /v1/completions, GET /v1/models"


@dataclass
class Reply:
    """A JSON answer: its status, body and headers."""

    status: int
    body: OpenAIModel
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return self.body.render()


@dataclass
class EventStream:
    """A streamed answer: ``text/event-stream`` events (``data: <json>\\n\\n``), ending with ``data: [DONE]``."""

    events: AsyncIterator[bytes]


def no_route(status: int, method: str, path: str, detail: str) -> Reply:
    """What the web framework answers itself (404: an unknown path, 405: a method a route does not take)."""
    kind = "method" if status == 405 else "not_found"
    status, body = openai_api.error(RequestRefused(kind, f"{method} {path[:200]}: {detail}; {ROUTES}"))
    return Reply(status, body)


def models(svc: CascadeService, headers: Mapping[str, str]) -> Reply:
    if not svc.authorized(headers.get("authorization", "")):
        e = Unauthenticated("missing or invalid bearer token: send `Authorization: Bearer <token>`")
        return error(svc, "models", e, time.perf_counter())
    return Reply(200, openai_api.models(svc.name, svc.cascade.names))


def error(svc: CascadeService, method: str, e: Exception, t0: float, body=None) -> Reply:
    message = svc.refused(method, e, t0)
    status, payload = openai_api.error(e, body, message)
    headers = {}
    if (ms := svc.retry_after_ms(e)) is not None:
        headers["Retry-After"] = str(max(1, math.ceil(ms / 1000)))
    return Reply(status, payload, headers)


async def complete(
    svc: CascadeService, kind: type, method: str, headers: Mapping[str, str], chunks: AsyncIterator[bytes]
) -> Union[Reply, EventStream]:
    """One ``/v1/chat/completions`` (``kind``: ``openai_api.ChatRequest``) or ``/v1/completions`` request:
    ``chunks``, its body as it arrives."""
    t0 = svc.enter()
    streaming, body = False, None
    try:
        svc.gate(headers.get("authorization", ""), "`Authorization: Bearer <token>`")
        body = openai_api.parse(kind, await read_body(headers, chunks, svc.limits, t0))
        call = openai_api.to_call(
            body,
            cascade_name=svc.name,
            tier_names=svc.cascade.names,
            limits=svc.limits,
            embed=svc.cascade.needs_embedding,
        )
        if body.stream:
            streaming = True  # the event stream owns the in-flight slot from here
            return EventStream(_sse(svc, call, method, t0))
        outs = await svc.run_all(call.requests)
        prompt_lps = await _prompt_logprobs(svc, call) if call.echo and call.logprobs else None
    except asyncio.CancelledError:
        svc.cancelled(method, t0)
        raise
    except Exception as e:
        return error(svc, method, e, t0, body)
    finally:
        if not streaming:
            svc.exit()
    for req, out in zip(call.requests, outs):
        svc.answered(method, req, out, t0)
    response = merged([svc.response(req, out, t0) for req, out in zip(call.requests, outs)])
    return Reply(200, openai_api.completion(call, outs, response, prompt_lps))


async def read_body(headers: Mapping[str, str], chunks: AsyncIterator[bytes], limits, t0: float) -> bytes:
    """The request's body, bounded: at most ``limits.max_request_bytes`` (413: refused on its Content-Length
    before a byte is read, or as soon as a body without one grows past it) and all of it within
    ``limits.http_body_timeout_s`` of the request's start (408: a slow or stalled sender)."""
    openai_api.check_content_type(headers.get("content-type"))
    limit = limits.max_request_bytes
    too_large = f"is over the limit of {limit} bytes (limits.max_request_bytes)"
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestRefused("too_large", f"{declared[:40]} {too_large}", "content-length")
    parts, size = [], 0
    budget = limits.http_body_timeout_s
    try:
        async with asyncio.timeout(max(budget - (time.perf_counter() - t0), 0.0)):
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise RequestRefused("too_large", f"the body {too_large}")
                parts.append(chunk)
    except TimeoutError:
        raise RequestRefused(
            "body_timeout",
            f"the body did not arrive within {budget:g} s (limits.http_body_timeout_s); {size} bytes came",
        ) from None
    return b"".join(parts)


async def _prompt_logprobs(svc: CascadeService, call: openai_api.Call) -> list[openai_api.PromptLogprobs]:
    """echo + logprobs: each choice's prompt scored by the tier the request names."""
    top = call.requests[0].request.decoding.top_logprobs or 0
    client = svc.cascade.client
    scored = await asyncio.gather(*(client.call(r.tiers[0], "prompt_logprobs", r.request, top) for r in call.requests))
    return [openai_api.PromptLogprobs(*s) for s in scored]


async def _sse(svc: CascadeService, call: openai_api.Call, method: str, t0: float) -> AsyncIterator[bytes]:
    rid = svc.request_id()
    outs: dict[int, Outcome] = {}
    produced, prompt_tokens = 0, 0
    n = len(call.requests)
    try:
        if call.chat:
            yield openai_api.sse(call, rid, [openai_api.sse_role(call, i) for i in range(n)])
        elif call.echo:
            yield openai_api.sse(call, rid, [openai_api.sse_echo(call, i) for i in range(len(call.prompts))])
        async for index, ev in svc.events(call.requests):
            if isinstance(ev, Text):
                produced += len(ev.token_ids)
                prompt_tokens = ev.prompt_tokens or prompt_tokens
                usage: Optional[UsageInfo] = None
                if call.continuous_usage:
                    usage = UsageInfo(
                        prompt_tokens=prompt_tokens, completion_tokens=produced, total_tokens=prompt_tokens + produced
                    )
                yield openai_api.sse(call, rid, [openai_api.sse_text(call, index, ev)], usage=usage)
            else:
                outs[index] = ev
                info = openai_api.cascade_info(svc.response(call.requests[index], ev, t0, text=""))
                yield openai_api.sse(call, rid, [openai_api.sse_final(call, index, ev)], cascade=info)
        if call.include_usage:
            yield openai_api.sse(call, rid, [], usage=openai_api.usage([outs[i] for i in range(n)]))
        yield b"data: [DONE]\n\n"
        for i, r in enumerate(call.requests):
            svc.answered(method, r, outs[i], t0)
    except (asyncio.CancelledError, GeneratorExit):  # the client went away (mid-await, or closed at a yield)
        svc.cancelled(method, t0)
        raise
    except Exception as e:
        message = svc.refused(method, e, t0)
        yield openai_api.sse_error(openai_api.error(e, call.body, message)[1])
    finally:
        svc.exit()
