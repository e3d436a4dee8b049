"""The gRPC front (``cascade.v1``): request bytes -> ``GenerateRequest`` (or a :class:`MalformedRequest`) ->
the walk's :class:`CascadeRequest`; the :class:`CascadeResponse` -> ``GenerateResponse``; an error -> a
status code, details and trailing metadata; and ``Generate`` / ``GenerateStream`` over the
:class:`CascadeService`. No grpc here (the servicer that Serve's proxy registers is
``serving.serve.grpc_service``; the Router hands in the call's context and ``grpc.StatusCode``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Optional

from google.protobuf.message import DecodeError

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.core.decoding import Decoding
from serving.core.errors import BadRequest
from serving.core.request import CascadeRequest, Text
from serving.fronts.outcome import CascadeResponse, TierReport, merged
from serving.fronts.service import CascadeService
from serving.fronts.status import status_of

SERVICE = "cascade.v1.Cascade"


@dataclass
class MalformedRequest:
    """Stands in for a request whose bytes are not a ``cascade.v1.GenerateRequest``: the Router answers it
    with INVALID_ARGUMENT like any other bad request (gRPC itself would fail inside the proxy with UNKNOWN
    and a Python exception text)."""

    size: int
    error: str


def parse_request(data: bytes):
    try:
        return pb.GenerateRequest.FromString(data)
    except (DecodeError, ValueError, RuntimeError) as e:  # RuntimeError: the C++ parser on some inputs
        return MalformedRequest(len(data), str(e) or type(e).__name__)


DECODING_FIELDS = {f.name for f in dataclass_fields(Decoding)}


def decoding(r) -> Decoding:
    """The request's decoding controls (unset fields keep the defaults)."""
    d = r.decoding
    opt = lambda name, default: getattr(d, name) if d.HasField(name) else default  # noqa: E731
    return Decoding(
        temperature=opt("temperature", 0.0),
        top_p=opt("top_p", 1.0),
        top_k=opt("top_k", 0),
        min_p=opt("min_p", 0.0),
        seed=opt("seed", None),
        stop=list(d.stop),
        stop_token_ids=list(d.stop_token_ids),
        min_tokens=d.min_tokens,
        ignore_eos=d.ignore_eos,
        repetition_penalty=opt("repetition_penalty", 1.0),
        presence_penalty=opt("presence_penalty", 0.0),
        frequency_penalty=opt("frequency_penalty", 0.0),
        logit_bias=dict(d.logit_bias),
        top_logprobs=opt("top_logprobs", 0 if r.include_logprobs else None),
    )


def to_requests(r, *, tier_names, limits, embed: bool, stream: bool) -> list[CascadeRequest]:
    """The walk's requests, one per answer asked for (``n``; a seeded request's k-th answer uses seed + k).
    BadRequest names the field in the walk's terms; :func:`error` renders it in the proto's."""
    if isinstance(r, MalformedRequest):
        raise BadRequest(f"the request ({r.size} bytes) is not a valid cascade.v1.GenerateRequest: {r.error}")
    n = r.n or 1
    if n > limits.max_n:
        raise BadRequest(f"must be at most {limits.max_n}, got {n}", "n")
    if stream and n > 1:
        raise BadRequest(
            "must be 1 for GenerateStream (a stream carries one answer): call Generate, or stream n calls", "n"
        )
    first = to_request(r, tier_names=tier_names, limits=limits, embed=embed, stream=stream)
    return [first] + [first.variant(k) for k in range(1, n)]


def to_request(r, *, tier_names, limits, embed: bool, stream: bool) -> CascadeRequest:
    """The walk's request for one answer."""
    if isinstance(r, MalformedRequest):
        raise BadRequest(f"the request ({r.size} bytes) is not a valid cascade.v1.GenerateRequest: {r.error}")
    return CascadeRequest.build(
        decoding=decoding(r),
        prompt=r.prompt,
        messages=[{"role": m.role, "content": m.content} for m in r.messages],
        max_new_tokens=r.max_new_tokens or None,
        force_tier=r.force_tier,
        threshold=r.threshold if r.HasField("threshold") else None,
        include_logprobs=r.include_logprobs,
        token_alpha=r.token_alpha if r.HasField("token_alpha") else None,
        stream=stream,
        tier_names=tier_names,
        limits=limits,
        embed=embed,
    )


def to_response(r: CascadeResponse, finished: bool = False) -> pb.GenerateResponse:
    """``r``: one answer, or (n > 1, :func:`serving.fronts.outcome.merged`) the first with usage and receipt
    summed over all and every answer under ``choices``."""
    msg = _message(r, finished)
    msg.choices.extend(_message(c) for c in r.choices)
    return msg


def _message(r: CascadeResponse, finished: bool = False) -> pb.GenerateResponse:
    rc = r.receipt
    return pb.GenerateResponse(
        text=r.text,
        tier=r.tier,
        deferred=r.deferred,
        score=r.score,
        threshold=r.threshold,
        rule=r.rule,
        usage=pb.Usage(prompt_tokens=r.usage.prompt_tokens, completion_tokens=r.usage.completion_tokens),
        tiers=[_tier(t) for t in r.tiers],
        total_latency_ms=r.total_latency_ms,
        request_id=r.request_id,
        finished=finished,
        degraded=r.degraded,
        degraded_reason=r.degraded_reason,
        receipt=pb.Receipt(
            lines=[
                pb.ReceiptLine(
                    tier=x.tier,
                    prompt_tokens=x.prompt_tokens,
                    completion_tokens=x.completion_tokens,
                    cost=x.cost,
                    discarded=x.discarded,
                    judge=x.judge,
                )
                for x in rc.lines
            ],
            total=rc.total,
            strong_tier=rc.strong_tier,
            strong_only=rc.strong_only,
            strong_only_prompt_tokens=rc.strong_only_prompt_tokens,
            strong_only_completion_tokens=rc.strong_only_completion_tokens,
            strong_only_estimated=rc.strong_only_estimated,
            strong_passes=rc.strong_passes,
            tokens_replaced=rc.tokens_replaced,
        ),
        load_shed=r.load_shed,
        decided_by=r.decided_by,
        **({} if r.judgement is None else {"judgement": pb.Judgement(**vars(r.judgement))}),
    )


def _tier(t: TierReport):
    fields = {k: v for k, v in vars(t).items() if k != "top_logprobs"}
    return pb.TierResult(
        **fields,
        top_logprobs=[
            pb.TokenAlternatives(
                token_ids=[a[0] for a in step],
                logprobs=[a[1] for a in step],
                tokens=[a[2] if len(a) > 2 else "" for a in step],
            )
            for step in t.top_logprobs
        ],
    )


def text_message(tier: str, text: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(text=text, tier=tier)


def error(e: BaseException, retry_after: Optional[int]) -> tuple[str, str, list[tuple[str, str]]]:
    """(status code name, details, trailing metadata) for an error; the details name fields as the proto does."""
    status = status_of(e)
    message = str(e)
    if isinstance(e, BadRequest) and e.field and e.field.split("[")[0] in DECODING_FIELDS:
        message = f"`decoding.{e.field}` {e.problem}"
    trailing = []
    if retry_after is not None:
        if "retry after" not in message:
            message = f"{message}; retry after {retry_after} ms"
        trailing.append(("retry-after-ms", str(retry_after)))
    return status.grpc, message, trailing


# ---- the service's gRPC methods (the Router's ``Generate`` and ``GenerateStream`` call these) -------------
def _requests(svc: CascadeService, request, context, stream: bool) -> list[CascadeRequest]:
    svc.gate(
        dict(context.invocation_metadata()).get("authorization", ""),
        "metadata `authorization: Bearer <token>`",
    )
    c = svc.cascade
    return to_requests(request, tier_names=c.names, limits=svc.limits, embed=c.needs_embedding, stream=stream)


def _error(svc: CascadeService, context, codes, method: str, e: Exception, t0: float) -> pb.GenerateResponse:
    """The status of a call that failed, set on ``context`` (``codes``: ``grpc.StatusCode``)."""
    message = svc.refused(method, e, t0)
    code, details, trailing = error(e, svc.retry_after_ms(e))
    context.set_code(getattr(codes, code))
    context.set_details(message if code == "INTERNAL" else details)
    if trailing:
        context.set_trailing_metadata(trailing)
    return pb.GenerateResponse()


async def generate(svc: CascadeService, request, context, codes) -> pb.GenerateResponse:
    t0 = svc.enter()
    try:
        reqs = _requests(svc, request, context, stream=False)
        outs = await svc.run_all(reqs)
    except asyncio.CancelledError:
        svc.cancelled("Generate", t0)
        raise
    except Exception as e:
        return _error(svc, context, codes, "Generate", e, t0)
    finally:
        svc.exit()
    for req, out in zip(reqs, outs):
        svc.answered("Generate", req, out, t0)
    return to_response(merged([svc.response(req, out, t0) for req, out in zip(reqs, outs)]))


async def generate_stream(svc: CascadeService, request, context, codes) -> AsyncIterator[pb.GenerateResponse]:
    """Text as soon as it is certain to be part of the answer, then a last message with ``finished: true`` and
    the metadata."""
    t0 = svc.enter()
    out = None
    try:
        [req] = _requests(svc, request, context, stream=True)
        async with aclosing(svc.cascade.walk(req)) as events:
            async for ev in events:
                if isinstance(ev, Text):
                    yield text_message(ev.tier, ev.text)
                else:
                    out = ev
    except (asyncio.CancelledError, GeneratorExit):  # a hang-up: cancelled mid-await, or closed at a yield
        svc.cancelled("GenerateStream", t0)
        raise
    except Exception as e:
        yield _error(svc, context, codes, "GenerateStream", e, t0)
        return
    finally:
        svc.exit()
    try:
        yield to_response(svc.response(req, out, t0, text=""), finished=True)
    finally:  # once the last message is handed on (shadow sampling), even if the caller stops reading there
        svc.answered("GenerateStream", req, out, t0)
