"""The gRPC front's mapping (``cascade.v1``): request bytes -> ``GenerateRequest`` (or a
:class:`MalformedRequest`) -> the walk's :class:`CascadeRequest`; the walk's outcome ->
``GenerateResponse``; an error -> a status code, details and trailing metadata. No grpc here (the
servicer that Serve's proxy registers is ``serving.serve.grpc_service``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Optional

from google.protobuf.message import DecodeError

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.core.decoding import Decoding
from serving.core.errors import BadRequest
from serving.core.request import CascadeRequest
from serving.fronts.outcome import sum_usage
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
        stream=stream,
        tier_names=tier_names,
        limits=limits,
        embed=embed,
    )


def to_response(fields: dict, finished: bool = False, choices: Sequence[dict] = ()) -> pb.GenerateResponse:
    """``fields``: ``serving.fronts.outcome.response_fields``; ``choices``: every answer's, when n > 1 (the
    top level then carries the first answer with usage and receipt summed over all)."""
    if len(choices) > 1:
        fields = sum_usage(choices)
    msg = pb.GenerateResponse(finished=finished, **_pb_fields(fields))
    if len(choices) > 1:
        msg.choices.extend(pb.GenerateResponse(**_pb_fields(c)) for c in choices)
    return msg


def _pb_fields(fields: dict) -> dict:
    out = dict(fields)
    if out.get("judgement") is None:
        out.pop("judgement", None)
    out["tiers"] = [
        {
            **t,
            "top_logprobs": [
                {
                    "token_ids": [a[0] for a in step],
                    "logprobs": [a[1] for a in step],
                    "tokens": [a[2] if len(a) > 2 else "" for a in step],
                }
                for step in t["top_logprobs"]
            ],
        }
        for t in fields["tiers"]
    ]
    return out


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
