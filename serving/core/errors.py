"""The errors of the request path. Each front maps them to its own status through one table
(``serving.fronts.status``)."""

from __future__ import annotations

from typing import Optional


class BadRequest(ValueError):
    """A request the cascade refuses (gRPC INVALID_ARGUMENT, HTTP 400), raised by the fronts, the walk or a
    tier. ``field`` names the offending request field in the walk's terms (``max_new_tokens``,
    ``messages[2].role``, ...) and ``problem`` says what is wrong with it; each front renders the field
    under its own wire name (``serving.fronts``). Without ``field`` the message is ``problem`` alone."""

    def __init__(self, problem: str, field: Optional[str] = None):
        self.problem, self.field = problem, field
        super().__init__(f"`{field}` {problem}" if field else problem)

    def __reduce__(self):  # crosses Ray process boundaries with both parts
        return type(self), (self.problem, self.field)


class RequestRefused(BadRequest):
    """A request refused before its body is read or parsed (the HTTP front: its headers, its body's size or
    the time it takes to arrive, an unknown route); ``kind`` picks its row of the status table (too_large,
    body_timeout, media_type, not_found, method)."""

    def __init__(self, kind: str, problem: str, field: Optional[str] = None):
        super().__init__(problem, field)
        self.kind = kind

    def __reduce__(self):
        return type(self), (self.kind, self.problem, self.field)


class TierFailure(Exception):
    """A tier could not answer; ``reason`` is one of timeout, replica_died, overloaded, unavailable,
    not_ready (no running replica: still starting, or scaled to zero; refused without waiting), breaker_open,
    error."""

    def __init__(self, tier: str, reason: str, message: str):
        super().__init__(message)
        self.tier, self.reason = tier, reason


class Unauthenticated(Exception):
    """Missing or invalid bearer token (gRPC UNAUTHENTICATED, HTTP 401)."""


class Overloaded(Exception):
    """Admission control refused the request (gRPC RESOURCE_EXHAUSTED, HTTP 429); retry after
    ``retry_after_ms``."""

    def __init__(self, message: str, retry_after_ms: int):
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class EngineError(RuntimeError):
    """The engine failed a request (not the request's fault)."""
