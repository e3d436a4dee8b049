"""The OpenAI-compatible HTTP front's mapping (no Ray, no FastAPI): an OpenAI request body -> the walk's
:class:`CascadeRequest` (pydantic validates the body's shape; the shared limits are checked once, by
``CascadeRequest.build``), and the walk's outcome -> OpenAI response JSON / Server-Sent Events. The
routes live on the Router (``serving/serve/router.py``), so HTTP and gRPC share the gates, the walk and
the metrics.

Cascade controls are typed, not smuggled in the model name: ``model`` is the cascade's name, or
``<cascade>:<tier>`` to force a tier; an extra body object ``"cascade": {"threshold": .., "force_tier":
.., "include_logprobs": ..}`` overrides per request. Decoding is greedy: ``temperature`` 0 (or unset)
and ``top_p`` 1 (or unset) are accepted, other values refused with 400; so are ``stop``, ``n`` > 1 and
tools. Unknown fields are ignored, as OpenAI's clients send many.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.core.errors import BadRequest
from serving.core.request import CascadeRequest
from serving.fronts.status import status_of

# the walk's field names -> this API's (a BadRequest names the walk's)
FIELDS = {
    "max_new_tokens": "max_tokens",
    "force_tier": "cascade.force_tier",
    "threshold": "cascade.threshold",
    "include_logprobs": "cascade.include_logprobs",
}


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


def field_name(field: Optional[str], body: _Common) -> Optional[str]:
    """A walk field's name in this API."""
    if field == "prompt" and isinstance(body, ChatRequest):
        return "messages"
    return FIELDS.get(field, field)


def parse(kind: type[_Common], raw: bytes) -> _Common:
    try:
        data = json.loads(raw or b"null")
    except ValueError as e:
        raise BadRequest(f"the body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BadRequest(err["msg"], loc) from None


def _content(m: dict[str, Any], i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in c):
        return "".join(str(p.get("text", "")) for p in c)
    raise BadRequest("must be a string or a list of text parts", f"messages[{i}].content")


def to_request(body: _Common, *, cascade_name: str, tier_names: list[str], limits, embed: bool) -> CascadeRequest:
    """The walk's request for a parsed body (BadRequest names the field in the walk's terms; render it
    with :func:`error`)."""
    if body.temperature not in (None, 0, 0.0):
        raise BadRequest(
            "must be 0 or unset: the cascade decodes greedily (sampling is a tier setting, "
            "tiers[].generation.do_sample)",
            "temperature",
        )
    if body.top_p not in (None, 1, 1.0):
        raise BadRequest("must be 1 or unset: the cascade decodes greedily", "top_p")
    if body.n not in (None, 1):
        raise BadRequest("must be 1", "n")
    if body.stop:
        raise BadRequest("is not supported by the cascade", "stop")
    if body.max_tokens and body.max_completion_tokens and body.max_tokens != body.max_completion_tokens:
        raise BadRequest("and `max_completion_tokens` disagree", "max_tokens")
    name, _, tier = body.model.partition(":")
    if name != cascade_name or (tier and tier not in tier_names):
        raise BadRequest(
            f"must be {cascade_name!r} or one of {[f'{cascade_name}:{t}' for t in tier_names]}, got {body.model!r}",
            "model",
        )
    opts = body.cascade or CascadeOptions()
    if tier and opts.force_tier and opts.force_tier != tier:
        raise BadRequest("names one tier and `model` another", "force_tier")
    messages, prompt = [], ""
    if isinstance(body, ChatRequest):
        if not body.messages:
            raise BadRequest("must not be empty", "messages")
        for i, m in enumerate(body.messages):
            if not isinstance(m, dict) or "role" not in m:
                raise BadRequest("must be an object with `role` and `content`", f"messages[{i}]")
            messages.append({"role": str(m["role"]), "content": _content(m, i)})
    else:
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise BadRequest("must be a string (or a list of exactly one)", "prompt")
            prompt = prompt[0]
    return CascadeRequest.build(
        prompt=prompt,
        messages=messages,
        max_new_tokens=body.max_completion_tokens or body.max_tokens,
        force_tier=tier or opts.force_tier or "",
        threshold=opts.threshold,
        include_logprobs=opts.include_logprobs,
        stream=body.stream,
        tier_names=tier_names,
        limits=limits,
        embed=embed,
    )


def error(e: BaseException, body: Optional[_Common] = None, message: Optional[str] = None) -> tuple[int, dict]:
    """(HTTP status, OpenAI error JSON) for an error; a BadRequest's field is named as this API names it."""
    status = status_of(e)
    param = None
    if isinstance(e, BadRequest) and e.field:
        param = field_name(e.field, body) if body is not None else FIELDS.get(e.field, e.field)
        message = f"`{param}` {e.problem}"
    return status.http, {
        "error": {"message": message or str(e), "type": status.openai_type, "param": param, "code": status.grpc.lower()}
    }


def cascade_info(fields: dict[str, Any]) -> dict[str, Any]:
    """The ``cascade`` object of a response: the gRPC response's fields as protobuf's JSON mapping writes them
    (NaN as "NaN", unset optional scores left out)."""
    keep = (
        "tier",
        "deferred",
        "score",
        "threshold",
        "rule",
        "tiers",
        "degraded",
        "degraded_reason",
        "total_latency_ms",
        "request_id",
        "receipt",
        "load_shed",
    )
    out = {k: fields[k] for k in keep}
    out["score"], out["threshold"] = _number(out["score"]), _number(out["threshold"])
    out["tiers"] = [
        {k: (_number(v) if k == "score" else v) for k, v in t.items() if not (k == "score" and v is None)}
        for t in out["tiers"]
    ]
    return out


def _number(x: float):
    return x if math.isfinite(x) else ("NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity"))


def usage(fields: dict[str, Any]) -> dict[str, int]:
    p, c = fields["usage"]["prompt_tokens"], fields["usage"]["completion_tokens"]
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def finish_reason(fields: dict[str, Any]) -> str:
    last = fields["tiers"][-1]["finish_reason"] if fields["tiers"] else "stop"
    return "length" if last == "length" else "stop"


def completion(body: _Common, fields: dict[str, Any]) -> dict[str, Any]:
    base = {
        "id": f"cmpl-{fields['request_id']}",
        "created": int(time.time()),
        "model": body.model,
        "usage": usage(fields),
        "cascade": cascade_info(fields),
    }
    if isinstance(body, ChatRequest):
        return {
            **base,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": fields["text"]},
                    "finish_reason": finish_reason(fields),
                }
            ],
        }
    return {
        **base,
        "object": "text_completion",
        "choices": [{"index": 0, "text": fields["text"], "finish_reason": finish_reason(fields)}],
    }


def sse_chunk(
    body: _Common,
    request_id: str,
    text: Optional[str] = None,
    first: bool = False,
    final: Optional[dict] = None,
    usage_only: Optional[dict] = None,
) -> bytes:
    """One Server-Sent Event of a streamed completion (``final`` / ``usage_only``: response fields)."""
    chat = isinstance(body, ChatRequest)
    out: dict[str, Any] = {
        "id": f"cmpl-{request_id}",
        "created": int(time.time()),
        "model": body.model,
        "object": "chat.completion.chunk" if chat else "text_completion",
    }
    if usage_only is not None:
        out.update(choices=[], usage=usage(usage_only))
    else:
        reason = finish_reason(final) if final is not None else None
        if chat:
            delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
            out["choices"] = [{"index": 0, "delta": delta, "finish_reason": reason}]
        else:
            out["choices"] = [{"index": 0, "text": text or "", "finish_reason": reason}]
        if final is not None:
            out["cascade"] = cascade_info(final)
    return f"data: {json.dumps(out)}\n\n".encode()


def sse_error(status_body: dict) -> bytes:
    return f"data: {json.dumps(status_body)}\n\n".encode()


def models(cascade_name: str, tiers: list[str]) -> dict[str, Any]:
    now = int(time.time())
    ids = [cascade_name] + [f"{cascade_name}:{t}" for t in tiers]
    return {
        "object": "list",
        "data": [{"id": i, "object": "model", "created": now, "owned_by": "cascade"} for i in ids],
    }
