"""One status table for both fronts: an error of the request path -> the gRPC status, the HTTP
status and the OpenAI error type a client sees."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from serving.core.errors import BadRequest, Overloaded, RequestRefused, TierFailure, Unauthenticated


@dataclass(frozen=True)
class Status:
    grpc: str  # grpc.StatusCode name
    http: int
    openai_type: str  # OpenAI's error ``type``
    reason: str  # the label the metrics count refusals under


INVALID = Status("INVALID_ARGUMENT", 400, "invalid_request_error", "invalid_argument")
UNAUTHENTICATED = Status("UNAUTHENTICATED", 401, "authentication_error", "unauthenticated")
OVERLOADED = Status("RESOURCE_EXHAUSTED", 429, "rate_limit_error", "overloaded")
INTERNAL = Status("INTERNAL", 500, "server_error", "internal")
# refused before the body is parsed (HTTP), by RequestRefused.kind: gRPC itself refuses an oversize message
# with RESOURCE_EXHAUSTED, which the too_large row matches
REFUSED = {
    "too_large": Status("RESOURCE_EXHAUSTED", 413, "invalid_request_error", "too_large"),
    "body_timeout": Status("DEADLINE_EXCEEDED", 408, "invalid_request_error", "body_timeout"),
    "media_type": Status("INVALID_ARGUMENT", 415, "invalid_request_error", "invalid_argument"),
    "not_found": Status("UNIMPLEMENTED", 404, "invalid_request_error", "not_found"),
    "method": Status("UNIMPLEMENTED", 405, "invalid_request_error", "not_found"),
}
# a tier that failed, by TierFailure.reason (a timeout is UNAVAILABLE on gRPC: the tier, not the
# client's deadline; HTTP has 504 for it)
TIER = {"overloaded": OVERLOADED, "timeout": Status("UNAVAILABLE", 504, "timeout", "tier_timeout")}


def status_of(e: BaseException) -> Status:
    if isinstance(e, RequestRefused):
        return REFUSED[e.kind]
    if isinstance(e, BadRequest):
        return INVALID
    if isinstance(e, Unauthenticated):
        return UNAUTHENTICATED
    if isinstance(e, Overloaded):
        return OVERLOADED
    if isinstance(e, TierFailure):
        return TIER.get(e.reason, Status("UNAVAILABLE", 503, "service_unavailable", f"tier_{e.reason}"))
    return INTERNAL


def retry_after_ms(e: BaseException, default_ms: int) -> Optional[int]:
    """The retry hint for a refusal that asks the client to come back (admission, an overloaded tier, a tier
    with no running replica yet)."""
    if isinstance(e, Overloaded):
        return e.retry_after_ms
    if isinstance(e, TierFailure) and e.reason in ("overloaded", "not_ready"):
        return default_ms
    return None
