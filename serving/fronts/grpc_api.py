"""The gRPC front's mapping (``cascade.v1``): request bytes -> ``GenerateRequest`` (or a
:class:`MalformedRequest`) -> the walk's :class:`CascadeRequest`; the walk's outcome ->
``GenerateResponse``; an error -> a status code, details and trailing metadata. No grpc here (the
servicer that Serve's proxy registers is ``serving.serve.grpc_service``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from google.protobuf.message import DecodeError

from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.core.errors import BadRequest
from serving.core.request import CascadeRequest
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


def to_request(r, *, tier_names, limits, embed: bool, stream: bool) -> CascadeRequest:
    """The walk's request (BadRequest names the field, in this front's names: the proto's)."""
    if isinstance(r, MalformedRequest):
        raise BadRequest(f"the request ({r.size} bytes) is not a valid cascade.v1.GenerateRequest: {r.error}")
    return CascadeRequest.build(
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


def to_response(fields: dict, finished: bool = False) -> pb.GenerateResponse:
    """``fields``: ``serving.fronts.outcome.response_fields``."""
    return pb.GenerateResponse(finished=finished, **fields)


def text_message(tier: str, text: str) -> pb.GenerateResponse:
    return pb.GenerateResponse(text=text, tier=tier)


def error(e: BaseException, retry_after: Optional[int]) -> tuple[str, str, list[tuple[str, str]]]:
    """(status code name, details, trailing metadata) for an error; the details name fields as the proto does."""
    status = status_of(e)
    message = str(e)
    trailing = []
    if retry_after is not None:
        if "retry after" not in message:
            message = f"{message}; retry after {retry_after} ms"
        trailing.append(("retry-after-ms", str(retry_after)))
    return status.grpc, message, trailing
