"""The OpenAI-compatible HTTP front's mapping (no Ray, no FastAPI): an OpenAI request body -> the walk's
:class:`CascadeRequest` s (pydantic validates the body's shape; decoding controls and the shared limits are
checked once, by ``CascadeRequest.build``), and the walk's outcomes -> OpenAI responses and Server-Sent
Events (the pydantic models of ``openai_protocol``). The exchange is ``serving.fronts.http``, over the same
:class:`~serving.fronts.service.CascadeService` as gRPC: the same gates, walk and metrics.

Every field a client sends is honoured or refused with 400 naming it, never ignored (README: "The OpenAI
fields"). Cascade controls are typed, not smuggled in the model name: ``model`` is the cascade's name, or
``<cascade>:<tier>`` to force a tier; an extra body object ``"cascade": {"threshold": .., "force_tier": ..,
"include_logprobs": ..}`` overrides per request. ``n`` answers (and, for ``/v1/completions``, each prompt of a
list) are each their own walk.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from serving.core.decoding import Decoding
from serving.core.errors import BadRequest, RequestRefused
from serving.core.request import CascadeRequest, Outcome
from serving.fronts.openai_protocol import (
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatLogprobs,
    ChatMessage,
    ChatTokenLogprob,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    CompletionResponse,
    DeltaMessage,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    TopLogprob,
    UsageInfo,
)
from serving.fronts.outcome import CascadeResponse, TierReport
from serving.fronts.status import status_of

# the walk's field names -> this API's (a BadRequest names the walk's)
FIELDS = {
    "max_new_tokens": "max_tokens",
    "force_tier": "cascade.force_tier",
    "threshold": "cascade.threshold",
    "include_logprobs": "cascade.include_logprobs",
    "token_alpha": "cascade.token_alpha",
}
# Fields that do not change the answer: accepted as they are.
NO_EFFECT = {"user", "metadata", "store", "service_tier", "parallel_tool_calls"}
MESSAGE_KEYS = {"role", "content"}


class StreamOptions(BaseModel):
    """``stream_options``: what a streamed response adds (``to_call`` checks the raw object first, naming the
    field a client got wrong)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = False  # a last chunk with the usage of every answer
    continuous_usage_stats: bool = False  # every chunk with the usage so far


STREAM_OPTIONS = set(StreamOptions.model_fields)


class CascadeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: Optional[float] = None
    force_tier: Optional[str] = None
    include_logprobs: bool = False
    token_alpha: Optional[float] = None  # a token-level cascade's alpha for this request (deferral.token_rule)


class _Common(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    n: Optional[int] = Field(None, ge=1)
    # sampling (OpenAI's, and vLLM's extras)
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    seed: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    min_tokens: Optional[int] = None
    ignore_eos: Optional[bool] = None
    repetition_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    logit_bias: Optional[dict[str, float]] = None
    # refused unless they ask for nothing (no engine here constrains its output to a grammar or calls tools)
    response_format: Optional[dict[str, Any]] = None
    tools: Optional[list[Any]] = None
    tool_choice: Optional[Union[str, dict[str, Any]]] = None
    functions: Optional[list[Any]] = None
    function_call: Optional[Union[str, dict[str, Any]]] = None
    cascade: Optional[CascadeOptions] = None


class ChatRequest(_Common):
    messages: list[dict[str, Any]]
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]
    logprobs: Optional[int] = None
    echo: Optional[bool] = None
    best_of: Optional[int] = None
    suffix: Optional[str] = None


@dataclass
class Call:
    """What one OpenAI request asks: the walks to run (choice i is ``requests[i]``), and how to answer."""

    body: _Common
    requests: list[CascadeRequest]
    prompts: list[str] = field(default_factory=list)  # completions: choice i's prompt (for echo)
    logprobs: bool = False  # the answer's log-probs in the response (chat: logprobs; completions: logprobs=k)
    echo: bool = False
    stream_options: StreamOptions = field(default_factory=StreamOptions)

    @property
    def chat(self) -> bool:
        return isinstance(self.body, ChatRequest)

    @property
    def include_usage(self) -> bool:
        return self.stream_options.include_usage

    @property
    def continuous_usage(self) -> bool:
        return self.stream_options.continuous_usage_stats


def field_name(field: Optional[str], body: _Common) -> Optional[str]:
    """A walk field's name in this API."""
    if field == "prompt" and isinstance(body, ChatRequest):
        return "messages"
    if field == "top_logprobs" and isinstance(body, CompletionRequest):
        return "logprobs"
    return FIELDS.get(field, field)


MAX_DEPTH = 32  # deepest nesting of objects and arrays a body may have (every field here needs at most 4)
MEDIA_TYPE = "application/json"


def check_content_type(value: Optional[str]) -> None:
    """The body is JSON in UTF-8: a Content-Type that says otherwise is refused (415), not read as JSON
    anyway; none at all is taken as JSON."""
    if value is None:
        return
    media, *params = (p.strip() for p in value.split(";"))
    charset = next(
        (v.strip('"').lower() for k, _, v in (p.partition("=") for p in params) if k.lower() == "charset"), None
    )
    if media.lower() != MEDIA_TYPE or charset not in (None, "utf-8", "utf8"):
        raise RequestRefused("media_type", f"must be {MEDIA_TYPE!r} (UTF-8), got {value[:100]!r}", "content-type")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise BadRequest("appears twice in one object: which one to honour is ambiguous", dup)
    return out


def _check_tree(data: Any) -> None:
    """Nesting at most MAX_DEPTH deep, and every string (keys too) valid Unicode: JSON's \\u escapes can
    spell lone surrogates, which no tokenizer encodes. Raises BadRequest naming the path."""
    todo: list[tuple[Any, str, int]] = [(data, "", 0)]
    while todo:
        v, path, depth = todo.pop()
        if isinstance(v, str):
            _unicode(v, path)
        elif isinstance(v, (dict, list)):
            if depth >= MAX_DEPTH:
                raise BadRequest(f"nests deeper than {MAX_DEPTH} levels", path or None)
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if isinstance(k, str):
                    _unicode(k, path)
                    todo.append((x, f"{path}.{k}" if path else k, depth + 1))
                else:
                    todo.append((x, f"{path}[{k}]", depth + 1))


def _unicode(s: str, path: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadRequest(
            f"has a lone surrogate ({s[e.start]!r} at {e.start}): not valid Unicode", path or None
        ) from None


_UNION_TAG = re.compile(r"(str|int|float|bool|none|(list|dict|tuple|set)\[.*\])$")


def _path(loc: tuple) -> str:
    """A pydantic error's location as this API names a field (``messages[0].content``), without the member
    of a union pydantic tried (``prompt.str`` -> ``prompt``)."""
    out = ""
    for p in loc:
        if isinstance(p, int):
            out += f"[{p}]"
        elif not _UNION_TAG.match(p):
            out += f".{p}" if out else p
    return out


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", int: "a number", float: "a number"}[type(v)]


def parse(kind: type[_Common], raw: bytes) -> _Common:
    """The body (UTF-8 JSON: one object, no key twice, at most MAX_DEPTH deep) validated as ``kind``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"the body is not UTF-8: byte {e.start} is {raw[e.start : e.start + 1]!r}") from None
    try:
        data = json.loads(text or "null", object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise BadRequest(f"the body nests deeper than {MAX_DEPTH} levels") from None
    except BadRequest:
        raise
    except ValueError as e:
        why = str(e).split(";")[0] if "integer string conversion" in str(e) else str(e)  # Python's int limit
        raise BadRequest(f"the body is not JSON: {why}") from None
    if not isinstance(data, dict):
        raise BadRequest(f"the body must be a JSON object, got {_json_type(data)}")
    _check_tree(data)
    try:
        body = kind.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        raise BadRequest(err["msg"], _path(err["loc"])) from None
    unknown = sorted(set(body.model_extra or {}) - NO_EFFECT)
    if unknown:
        raise BadRequest(
            "is not a field this server knows: it is refused rather than ignored (the README lists every field "
            "it honours)",
            unknown[0],
        )
    return body


def _content(m: dict[str, Any], i: int) -> str:
    c = m.get("content")
    if isinstance(c, str):
        return c
    if isinstance(c, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in c):
        for j, p in enumerate(c):
            if not isinstance(p.get("text"), str):
                raise BadRequest("must be a string", f"messages[{i}].content[{j}].text")
        return "".join(p["text"] for p in c)
    raise BadRequest("must be a string or a list of text parts", f"messages[{i}].content")


def _refusals(body: _Common) -> None:
    """Fields that ask for what no tier here does (grammar-constrained output, tool calls)."""
    rf = body.response_format
    if rf is not None and rf.get("type") != "text":
        raise BadRequest(
            f"{rf.get('type')!r} is not supported: no tier constrains its output to JSON or a schema (only "
            "{'type': 'text'} is accepted)",
            "response_format",
        )
    if body.tools:
        raise BadRequest("is not supported: the cascade's tiers do not call tools", "tools")
    if body.functions:
        raise BadRequest("is not supported: the cascade's tiers do not call functions", "functions")
    for name in ("tool_choice", "function_call"):
        v = getattr(body, name)
        if v not in (None, "none", "auto"):
            raise BadRequest("is not supported: the cascade's tiers do not call tools", name)
    if isinstance(body, CompletionRequest):
        if body.suffix:
            raise BadRequest("is not supported (no tier does fill-in-the-middle)", "suffix")
        if body.best_of not in (None, 1) and body.best_of != (body.n or 1):
            raise BadRequest("must equal `n` (or be unset): the cascade returns every answer it generates", "best_of")


def decoding(body: _Common, top_logprobs: Optional[int]) -> Decoding:
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    bias = {}
    for k, v in (body.logit_bias or {}).items():
        try:
            bias[int(k)] = v
        except ValueError:
            raise BadRequest(f"keys must be token ids, got {k!r}", "logit_bias") from None
    pick = lambda v, default: default if v is None else v  # noqa: E731
    return Decoding(
        temperature=pick(body.temperature, 0.0),
        top_p=pick(body.top_p, 1.0),
        top_k=pick(body.top_k, 0),
        min_p=pick(body.min_p, 0.0),
        seed=body.seed,
        stop=stop,
        stop_token_ids=list(body.stop_token_ids or []),
        min_tokens=pick(body.min_tokens, 0),
        ignore_eos=bool(body.ignore_eos),
        repetition_penalty=pick(body.repetition_penalty, 1.0),
        presence_penalty=pick(body.presence_penalty, 0.0),
        frequency_penalty=pick(body.frequency_penalty, 0.0),
        logit_bias=bias,
        top_logprobs=top_logprobs,
    )


def to_call(body: _Common, *, cascade_name: str, tier_names: list[str], limits, embed: bool) -> Call:
    """The walks one request asks for (BadRequest names the field in the walk's terms; render it with
    :func:`error`)."""
    _refusals(body)
    unknown = sorted(set(body.stream_options or {}) - STREAM_OPTIONS)
    if unknown:
        raise BadRequest(f"has {unknown[0]!r}; the options honoured are {sorted(STREAM_OPTIONS)}", "stream_options")
    for k, v in (body.stream_options or {}).items():
        if not isinstance(v, bool):
            raise BadRequest(f"must be true or false, got {_json_type(v)}", f"stream_options.{k}")
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
    chat = isinstance(body, ChatRequest)
    if chat:
        if body.top_logprobs is not None and not body.logprobs:
            raise BadRequest("needs `logprobs: true`", "top_logprobs")
        wants = bool(body.logprobs)
        top = (body.top_logprobs or 0) if wants else None
        echo = False
    else:
        wants = body.logprobs is not None
        top = body.logprobs if wants else None
        echo = bool(body.echo)
        if echo and wants and not (tier or opts.force_tier):
            raise BadRequest(
                "with `logprobs` needs one tier (model 'cascade:<tier>'): the prompt's log-probs are one model's, "
                "and the cascade has not chosen its model before it answers",
                "echo",
            )
    n = body.n or 1
    prompts: list[Any] = [None]
    messages = []
    if chat:
        if not body.messages:
            raise BadRequest("must not be empty", "messages")
        for i, m in enumerate(body.messages):
            if not isinstance(m, dict) or "role" not in m:
                raise BadRequest("must be an object with `role` and `content`", f"messages[{i}]")
            extra = sorted(set(m) - MESSAGE_KEYS)
            if extra:
                raise BadRequest(
                    "is not supported in a message: it is refused rather than ignored", f"messages[{i}].{extra[0]}"
                )
            messages.append({"role": str(m["role"]), "content": _content(m, i)})
    else:
        prompts = body.prompt if isinstance(body.prompt, list) else [body.prompt]
        if not prompts:
            raise BadRequest("must not be empty", "prompt")
    if n * len(prompts) > limits.max_n:
        raise BadRequest(f"asks for {n * len(prompts)} answers (n x prompts); the limit is {limits.max_n}", "n")
    dec = decoding(body, top)
    requests, texts = [], []
    for p in prompts:
        first = CascadeRequest.build(
            prompt=p or "",
            messages=messages,
            max_new_tokens=body.max_completion_tokens or body.max_tokens,
            force_tier=tier or opts.force_tier or "",
            threshold=opts.threshold,
            include_logprobs=opts.include_logprobs,
            token_alpha=opts.token_alpha,
            stream=body.stream,
            tier_names=tier_names,
            limits=limits,
            embed=embed,
            decoding=dec,
        )
        for k in range(n):
            requests.append(first.variant(k) if k else first)
            texts.append(p or "")
    return Call(body, requests, texts, wants, echo, StreamOptions(**body.stream_options or {}))


def error(e: BaseException, body: Optional[_Common] = None, message: Optional[str] = None) -> tuple[int, ErrorResponse]:
    """(HTTP status, OpenAI error) for an error; a BadRequest's field is named as this API names it."""
    status = status_of(e)
    param = None
    if isinstance(e, BadRequest) and e.field:
        param = field_name(e.field, body) if body is not None else FIELDS.get(e.field, e.field)
        message = f"`{param}` {e.problem}"
    info = ErrorInfo(message=message or str(e), type=status.openai_type, param=param, code=status.grpc.lower())
    return status.http, ErrorResponse(error=info)


def cascade_info(r: CascadeResponse) -> dict[str, Any]:
    """The ``cascade`` object of a response: the gRPC response's fields as protobuf's JSON mapping writes them
    (NaN as "NaN", unset optional scores left out; the first answer's, with every answer's under ``choices``
    when there are several)."""
    rc = r.receipt
    out: dict[str, Any] = {
        "usage": {"prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens},
        "tier": r.tier,
        "deferred": r.deferred,
        "score": _number(r.score),
        "threshold": _number(r.threshold),
        "rule": r.rule,
        "tiers": [_tier_info(t) for t in r.tiers],
        "degraded": r.degraded,
        "degraded_reason": r.degraded_reason,
        "total_latency_ms": r.total_latency_ms,
        "request_id": r.request_id,
        "receipt": {
            "lines": [vars(x).copy() for x in rc.lines],
            "total": rc.total,
            "strong_tier": rc.strong_tier,
            "strong_only": rc.strong_only,
            "strong_only_prompt_tokens": rc.strong_only_prompt_tokens,
            "strong_only_completion_tokens": rc.strong_only_completion_tokens,
            "strong_only_estimated": rc.strong_only_estimated,
            "strong_passes": rc.strong_passes,
            "tokens_replaced": rc.tokens_replaced,
        },
        "load_shed": r.load_shed,
        "decided_by": r.decided_by,
    }
    if r.judgement is not None:  # only when the judge was asked (as the proto leaves it unset)
        out["judgement"] = {k: (_number(v) if isinstance(v, float) else v) for k, v in vars(r.judgement).items()}
    if r.choices:
        out["choices"] = [cascade_info(c) for c in r.choices]
    return out


def _tier_info(t: TierReport) -> dict[str, Any]:
    out = vars(t).copy()
    if t.score is None:
        del out["score"]
    else:
        out["score"] = _number(t.score)
    return out


def _number(x: float):
    return x if math.isfinite(x) else ("NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity"))


def usage(outs: list[Outcome]) -> UsageInfo:
    """OpenAI's usage: the answers' own tokens (the answering tier's prompt, the completion returned), what
    load tools count. Every tier's work, the discarded calls included, is ``cascade.usage`` (gRPC's
    ``usage``) and ``cascade.receipt``."""
    p = sum(o.answer.prompt_tokens for o in outs)
    c = sum(o.answer.completion_tokens for o in outs)
    return UsageInfo(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def finish_reason(out: Outcome) -> str:
    """OpenAI's reason: "length" when the answer hit its max tokens, else "stop" (end of sequence or a stop string)."""
    return "length" if out.answer.finish_reason == "length" else "stop"


@dataclass
class PromptLogprobs:
    """echo + logprobs on /v1/completions: the prompt's tokens, their log-probs (the first: none) and
    alternatives, from one scoring pass at the named tier."""

    token_texts: list[str]
    logprobs: list[float]
    top_logprobs: list[list[tuple]]


def _alternative(a: tuple) -> TopLogprob:
    return TopLogprob(token=a[2], logprob=_number(a[1]), bytes=list(a[2].encode()))


def _token(text: str, lp: float, tops=None) -> ChatTokenLogprob:
    alternatives = None if tops is None else [_alternative(a) for a in tops]
    return ChatTokenLogprob(token=text, logprob=_number(lp), bytes=list(text.encode()), top_logprobs=alternatives)


def chat_logprobs(texts: list[str], lps: list[float], tops: Optional[list]) -> ChatLogprobs:
    return ChatLogprobs(content=[_token(t, lp, (tops[i] if tops else [])) for i, (t, lp) in enumerate(zip(texts, lps))])


def completion_logprobs(
    texts: list[str], lps: list[float], tops: Optional[list], offset: int = 0
) -> CompletionLogprobs:
    offsets, at = [], offset
    for t in texts:
        offsets.append(at)
        at += len(t)
    return CompletionLogprobs(
        tokens=list(texts),
        token_logprobs=[None if math.isnan(lp) else lp for lp in lps],
        top_logprobs=[{a[2]: a[1] for a in step} for step in tops] if tops else [None] * len(texts),
        text_offset=offsets,
    )


def choice(call: Call, index: int, out: Outcome, prompt_lp: Optional[PromptLogprobs] = None):
    """One answer of a unary response."""
    a = out.answer
    texts = a.token_texts or []
    if call.chat:
        lp = chat_logprobs(texts, a.logprobs, a.top_logprobs) if call.logprobs else None
        return ChatChoice(
            index=index, message=ChatMessage(content=a.text), logprobs=lp, finish_reason=finish_reason(out)
        )
    prefix = call.prompts[index] if call.echo else ""
    clp = None
    if call.logprobs:
        clp = completion_logprobs(texts, a.logprobs, a.top_logprobs, len(prefix))
        if prompt_lp is not None:
            head = completion_logprobs(prompt_lp.token_texts, prompt_lp.logprobs, prompt_lp.top_logprobs)
            clp = CompletionLogprobs(
                tokens=head.tokens + clp.tokens,
                token_logprobs=head.token_logprobs + clp.token_logprobs,
                top_logprobs=head.top_logprobs + clp.top_logprobs,
                text_offset=head.text_offset + clp.text_offset,
            )
    return CompletionChoice(index=index, text=prefix + a.text, logprobs=clp, finish_reason=finish_reason(out))


def completion(call: Call, outs: list[Outcome], response: CascadeResponse, prompt_lps=None):
    """The unary response: every answer a choice; usage summed; ``cascade`` the first answer's (with every
    answer's under ``cascade.choices`` when there are several: ``response`` is
    :func:`serving.fronts.outcome.merged`)."""
    kind = ChatCompletionResponse if call.chat else CompletionResponse
    return kind(
        id=f"cmpl-{response.request_id}",
        created=int(time.time()),
        model=call.body.model,
        choices=[choice(call, i, o, (prompt_lps or [None] * len(outs))[i]) for i, o in enumerate(outs)],
        usage=usage(outs),
        cascade=cascade_info(response),
    )


def sse(call: Call, request_id: str, choices: list, **extra) -> bytes:
    """One Server-Sent Event of a streamed completion (``extra``: its ``usage`` or ``cascade``)."""
    kind = ChatCompletionChunk if call.chat else CompletionChunk
    chunk = kind(id=f"cmpl-{request_id}", created=int(time.time()), model=call.body.model, choices=choices, **extra)
    return b"data: " + chunk.model_dump_json().encode() + b"\n\n"  # compact JSON, as vLLM writes it


def sse_role(call: Call, index: int) -> ChatChunkChoice:
    """The first delta of a chat answer (its role)."""
    return ChatChunkChoice(
        index=index, delta=DeltaMessage(role="assistant", content=""), logprobs=None, finish_reason=None
    )


def sse_echo(call: Call, index: int) -> CompletionChoice:
    """The first chunk of an echoed completion: its prompt."""
    return CompletionChoice(index=index, text=call.prompts[index], logprobs=None, finish_reason=None)


def sse_text(call: Call, index: int, ev):
    """A delta: text certain to be part of answer ``index`` (a walk's Text event)."""
    lp = None
    if call.logprobs and ev.token_texts is not None:
        lp = (chat_logprobs if call.chat else completion_logprobs)(ev.token_texts, ev.logprobs, ev.top_logprobs)
    if call.chat:
        return ChatChunkChoice(index=index, delta=DeltaMessage(content=ev.text), logprobs=lp, finish_reason=None)
    return CompletionChoice(index=index, text=ev.text, logprobs=lp, finish_reason=None)


def sse_final(call: Call, index: int, out: Outcome):
    """The last delta of answer ``index``: its finish reason."""
    if call.chat:
        return ChatChunkChoice(index=index, delta=DeltaMessage(), logprobs=None, finish_reason=finish_reason(out))
    return CompletionChoice(index=index, text="", logprobs=None, finish_reason=finish_reason(out))


def sse_error(e: ErrorResponse) -> bytes:
    return f"data: {json.dumps(e.render())}\n\n".encode()


def models(cascade_name: str, tiers: list[str]) -> ModelList:
    now = int(time.time())
    ids = [cascade_name] + [f"{cascade_name}:{t}" for t in tiers]
    return ModelList(data=[ModelCard(id=i, created=now) for i in ids])
