from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("prompt", "messages", "max_new_tokens", "force_tier", "threshold", "include_logprobs")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORCE_TIER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    max_new_tokens: int
    force_tier: str
    threshold: float
    include_logprobs: bool
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., force_tier: _Optional[str] = ..., threshold: _Optional[float] = ..., include_logprobs: _Optional[bool] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class TierResult(_message.Message):
    __slots__ = ("tier", "text", "score", "latency_ms", "prompt_tokens", "completion_tokens", "token_logprobs", "finish_reason", "tier_ms", "decision_tokens", "decided_early", "draft_tokens", "draft_accepted_tokens")
    TIER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    TIER_MS_FIELD_NUMBER: _ClassVar[int]
    DECISION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_EARLY_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_ACCEPTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    tier: str
    text: str
    score: float
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    token_logprobs: _containers.RepeatedScalarFieldContainer[float]
    finish_reason: str
    tier_ms: float
    decision_tokens: int
    decided_early: bool
    draft_tokens: int
    draft_accepted_tokens: int
    def __init__(self, tier: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., latency_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., token_logprobs: _Optional[_Iterable[float]] = ..., finish_reason: _Optional[str] = ..., tier_ms: _Optional[float] = ..., decision_tokens: _Optional[int] = ..., decided_early: _Optional[bool] = ..., draft_tokens: _Optional[int] = ..., draft_accepted_tokens: _Optional[int] = ...) -> None: ...

class ReceiptLine(_message.Message):
    __slots__ = ("tier", "prompt_tokens", "completion_tokens", "cost", "discarded")
    TIER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_FIELD_NUMBER: _ClassVar[int]
    tier: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    discarded: bool
    def __init__(self, tier: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost: _Optional[float] = ..., discarded: _Optional[bool] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("lines", "total", "strong_tier", "strong_only", "strong_only_prompt_tokens", "strong_only_completion_tokens", "strong_only_estimated")
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STRONG_TIER_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[ReceiptLine]
    total: float
    strong_tier: str
    strong_only: float
    strong_only_prompt_tokens: int
    strong_only_completion_tokens: int
    strong_only_estimated: bool
    def __init__(self, lines: _Optional[_Iterable[_Union[ReceiptLine, _Mapping]]] = ..., total: _Optional[float] = ..., strong_tier: _Optional[str] = ..., strong_only: _Optional[float] = ..., strong_only_prompt_tokens: _Optional[int] = ..., strong_only_completion_tokens: _Optional[int] = ..., strong_only_estimated: _Optional[bool] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "tier", "deferred", "score", "threshold", "rule", "usage", "tiers", "total_latency_ms", "request_id", "finished", "degraded", "degraded_reason", "receipt", "load_shed")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    DEFERRED_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIERS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_REASON_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    LOAD_SHED_FIELD_NUMBER: _ClassVar[int]
    text: str
    tier: str
    deferred: bool
    score: float
    threshold: float
    rule: str
    usage: Usage
    tiers: _containers.RepeatedCompositeFieldContainer[TierResult]
    total_latency_ms: float
    request_id: str
    finished: bool
    degraded: bool
    degraded_reason: str
    receipt: Receipt
    load_shed: bool
    def __init__(self, text: _Optional[str] = ..., tier: _Optional[str] = ..., deferred: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., rule: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[TierResult, _Mapping]]] = ..., total_latency_ms: _Optional[float] = ..., request_id: _Optional[str] = ..., finished: _Optional[bool] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., load_shed: _Optional[bool] = ...) -> None: ...
