"""The OpenAI-compatible HTTP front, as mapping only (no Ray): OpenAI request JSON -> the same
``cascade.v1.GenerateRequest`` the gRPC front validates, and the cascade's outcome -> OpenAI response
JSON / Server-Sent Events. The routes live on the Router (serving/deployments/router.py), so HTTP and
gRPC share validation, limits, auth, admission, the cascade walk and metrics.

Cascade controls are typed, not smuggled in the model name: ``model`` is the cascade's name, or
``<cascade>:<tier>`` to force a tier; an extra body object ``"cascade": {"threshold": .., "force_tier":
.., "include_logprobs": ..}`` overrides per request. Decoding is greedy: ``temperature`` 0 (or unset)
and ``top_p`` 1 (or unset) are accepted, other values refused with 400; so are ``stop``, ``n`` > 1 and
tools. Unknown fields are ignored, as OpenAI's clients send many.
"""

from __future__ import annotations

import json
import time
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving._proto.cascade.v1 import cascade_pb2 as pb

class _Replica:
    router = None  # set by the Router deployment's constructor in its replica process


REPLICA = _Replica()

# gRPC status name -> (HTTP status, OpenAI error type)
HTTP_STATUS = {"INVALID_ARGUMENT": (400, "invalid_request_error"), "UNAUTHENTICATED": (401, "authentication_error"),
               "RESOURCE_EXHAUSTED": (429, "rate_limit_error"), "UNAVAILABLE": (503, "service_unavailable"),
               "DEADLINE_EXCEEDED": (504, "timeout"), "INTERNAL": (500, "server_error")}


class BadHTTPRequest(ValueError):
    """A request refused with 400; ``param`` names the field."""

    def __init__(self, message: str, param: Optional[str] = None):
        super().__init__(message)
        self.param = param


class CascadeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: Optional[float] = None
    force_tier: Optional[str] = None
    include_logprobs: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    cascade: Optional[CascadeOptions] = None


class ChatRequest(_Common):
    messages: list[dict[str, Any]]


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]


def parse(kind: type[_Common], body: bytes) -> _Common:
    try:
        raw = json.loads(body or b"null")
    except ValueError as e:
        raise BadHTTPRequest(f"the body is not JSON: {e}") from None
    if not isinstance(raw, dict):
        raise BadHTTPRequest("the body must be a JSON object")
    try:
        return kind.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BadHTTPRequest(f"`{loc}`: {err['msg']}", loc) from None


def _content(m: dict[str, Any], i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in c):
        return "".join(str(p.get("text", "")) for p in c)
    raise BadHTTPRequest(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def to_grpc(req: _Common, cascade_name: str, tiers: list[str]) -> pb.GenerateRequest:
    """The gRPC request the cascade validates (plan_request does the rest, naming the fields)."""
    if req.temperature not in (None, 0, 0.0):
        raise BadHTTPRequest("`temperature` must be 0 or unset: the cascade decodes greedily (sampling is a tier "
                             "setting, tiers[].generation.do_sample)", "temperature")
    if req.top_p not in (None, 1, 1.0):
        raise BadHTTPRequest("`top_p` must be 1 or unset: the cascade decodes greedily", "top_p")
    if req.n not in (None, 1):
        raise BadHTTPRequest("`n` must be 1", "n")
    if req.stop:
        raise BadHTTPRequest("`stop` is not supported by the cascade", "stop")
    if req.max_tokens and req.max_completion_tokens and req.max_tokens != req.max_completion_tokens:
        raise BadHTTPRequest("`max_tokens` and `max_completion_tokens` disagree", "max_tokens")
    name, _, tier = req.model.partition(":")
    if name != cascade_name or (tier and tier not in tiers):
        raise BadHTTPRequest(f"`model` must be {cascade_name!r} or one of "
                             f"{[f'{cascade_name}:{t}' for t in tiers]}, got {req.model!r}", "model")
    opts = req.cascade or CascadeOptions()
    if tier and opts.force_tier and opts.force_tier != tier:
        raise BadHTTPRequest("`model` names one tier and `cascade.force_tier` another", "cascade.force_tier")
    out = pb.GenerateRequest(max_new_tokens=req.max_completion_tokens or req.max_tokens or 0,
                             force_tier=tier or opts.force_tier or "", include_logprobs=opts.include_logprobs)
    if opts.threshold is not None:
        out.threshold = opts.threshold
    if isinstance(req, ChatRequest):
        for i, m in enumerate(req.messages):
            if not isinstance(m, dict) or "role" not in m:
                raise BadHTTPRequest(f"messages[{i}] must be an object with `role` and `content`", f"messages[{i}]")
            out.messages.add(role=str(m["role"]), content=_content(m, i))
        if not req.messages:
            raise BadHTTPRequest("`messages` must not be empty", "messages")
    else:
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise BadHTTPRequest("`prompt` must be a string (or a list of exactly one)", "prompt")
            prompt = prompt[0]
        out.prompt = prompt
    return out


def http_message(message: str) -> str:
    """A validation message in the HTTP API's field names."""
    return message.replace("`max_new_tokens`", "`max_tokens`").replace("`force_tier`", "`cascade.force_tier`") \
        .replace("`threshold`", "`cascade.threshold`")


def error_body(status_name: str, message: str, param: Optional[str] = None) -> tuple[int, dict]:
    status, kind = HTTP_STATUS.get(status_name, (500, "server_error"))
    return status, {"error": {"message": message, "type": kind, "param": param, "code": status_name.lower()}}


def cascade_info(resp: pb.GenerateResponse) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    d = MessageToDict(resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    keep = ("tier", "deferred", "score", "threshold", "rule", "tiers", "degraded", "degraded_reason",
            "total_latency_ms", "request_id", "receipt", "load_shed")
    return {k: d[k] for k in keep if k in d}


def usage(resp: pb.GenerateResponse) -> dict[str, int]:
    p, c = resp.usage.prompt_tokens, resp.usage.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def finish_reason(resp: pb.GenerateResponse) -> str:
    last = resp.tiers[-1].finish_reason if resp.tiers else "stop"
    return "length" if last == "length" else "stop"


def completion(req: _Common, resp: pb.GenerateResponse, text: str) -> dict[str, Any]:
    base = {"id": f"cmpl-{resp.request_id}", "created": int(time.time()), "model": req.model,
            "usage": usage(resp), "cascade": cascade_info(resp)}
    if isinstance(req, ChatRequest):
        return {**base, "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason(resp)}]}
    return {**base, "object": "text_completion",
            "choices": [{"index": 0, "text": text, "finish_reason": finish_reason(resp)}]}


def sse_chunk(req: _Common, request_id: str, text: Optional[str] = None, first: bool = False,
              final: Optional[pb.GenerateResponse] = None, usage_only: Optional[pb.GenerateResponse] = None) -> bytes:
    """One Server-Sent Event of a streamed completion."""
    chat = isinstance(req, ChatRequest)
    body: dict[str, Any] = {"id": f"cmpl-{request_id}", "created": int(time.time()), "model": req.model,
                            "object": "chat.completion.chunk" if chat else "text_completion"}
    if usage_only is not None:
        body.update(choices=[], usage=usage(usage_only))
    else:
        reason = finish_reason(final) if final is not None else None
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            body["choices"] = [{"index": 0, "delta": delta, "finish_reason": reason}]
        else:
            body["choices"] = [{"index": 0, "text": text or "", "finish_reason": reason}]
        if final is not None:
            body["cascade"] = cascade_info(final)
    return f"data: {json.dumps(body)}\n\n".encode()


def models(cascade_name: str, tiers: list[str]) -> dict[str, Any]:
    now = int(time.time())
    ids = [cascade_name] + [f"{cascade_name}:{t}" for t in tiers]
    return {"object": "list", "data": [{"id": i, "object": "model", "created": now, "owned_by": "cascade"} for i in ids]}
