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
    __slots__ = ("prompt", "messages", "max_new_tokens", "force_tier", "threshold", "include_logprobs", "decoding", "n", "token_alpha")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FORCE_TIER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    DECODING_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ALPHA_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    max_new_tokens: int
    force_tier: str
    threshold: float
    include_logprobs: bool
    decoding: Decoding
    n: int
    token_alpha: float
    def __init__(self, prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., max_new_tokens: _Optional[int] = ..., force_tier: _Optional[str] = ..., threshold: _Optional[float] = ..., include_logprobs: _Optional[bool] = ..., decoding: _Optional[_Union[Decoding, _Mapping]] = ..., n: _Optional[int] = ..., token_alpha: _Optional[float] = ...) -> None: ...

class Decoding(_message.Message):
    __slots__ = ("temperature", "top_p", "top_k", "min_p", "seed", "stop", "stop_token_ids", "min_tokens", "ignore_eos", "repetition_penalty", "presence_penalty", "frequency_penalty", "logit_bias", "top_logprobs")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    IGNORE_EOS_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    min_tokens: int
    ignore_eos: bool
    repetition_penalty: float
    presence_penalty: float
    frequency_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    top_logprobs: int
    def __init__(self, temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., min_tokens: _Optional[int] = ..., ignore_eos: _Optional[bool] = ..., repetition_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., top_logprobs: _Optional[int] = ...) -> None: ...

class TokenAlternatives(_message.Message):
    __slots__ = ("token_ids", "logprobs", "tokens")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., tokens: _Optional[_Iterable[str]] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class TierResult(_message.Message):
    __slots__ = ("tier", "text", "score", "latency_ms", "prompt_tokens", "completion_tokens", "token_logprobs", "finish_reason", "tier_ms", "decision_tokens", "decided_early", "draft_tokens", "draft_accepted_tokens", "token_ids", "tokens", "top_logprobs", "verify_skipped")
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
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    VERIFY_SKIPPED_FIELD_NUMBER: _ClassVar[int]
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
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens: _containers.RepeatedScalarFieldContainer[str]
    top_logprobs: _containers.RepeatedCompositeFieldContainer[TokenAlternatives]
    verify_skipped: str
    def __init__(self, tier: _Optional[str] = ..., text: _Optional[str] = ..., score: _Optional[float] = ..., latency_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., token_logprobs: _Optional[_Iterable[float]] = ..., finish_reason: _Optional[str] = ..., tier_ms: _Optional[float] = ..., decision_tokens: _Optional[int] = ..., decided_early: _Optional[bool] = ..., draft_tokens: _Optional[int] = ..., draft_accepted_tokens: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., tokens: _Optional[_Iterable[str]] = ..., top_logprobs: _Optional[_Iterable[_Union[TokenAlternatives, _Mapping]]] = ..., verify_skipped: _Optional[str] = ...) -> None: ...

class ReceiptLine(_message.Message):
    __slots__ = ("tier", "prompt_tokens", "completion_tokens", "cost", "discarded", "judge")
    TIER_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    DISCARDED_FIELD_NUMBER: _ClassVar[int]
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    tier: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    discarded: bool
    judge: bool
    def __init__(self, tier: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost: _Optional[float] = ..., discarded: _Optional[bool] = ..., judge: _Optional[bool] = ...) -> None: ...

class Judgement(_message.Message):
    __slots__ = ("judge", "method", "score", "threshold", "latency_ms", "comparisons", "fallback", "window_low", "window_high")
    JUDGE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    COMPARISONS_FIELD_NUMBER: _ClassVar[int]
    FALLBACK_FIELD_NUMBER: _ClassVar[int]
    WINDOW_LOW_FIELD_NUMBER: _ClassVar[int]
    WINDOW_HIGH_FIELD_NUMBER: _ClassVar[int]
    judge: str
    method: str
    score: float
    threshold: float
    latency_ms: float
    comparisons: int
    fallback: str
    window_low: float
    window_high: float
    def __init__(self, judge: _Optional[str] = ..., method: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., latency_ms: _Optional[float] = ..., comparisons: _Optional[int] = ..., fallback: _Optional[str] = ..., window_low: _Optional[float] = ..., window_high: _Optional[float] = ...) -> None: ...

class Receipt(_message.Message):
    __slots__ = ("lines", "total", "strong_tier", "strong_only", "strong_only_prompt_tokens", "strong_only_completion_tokens", "strong_only_estimated", "strong_passes", "tokens_replaced")
    LINES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    STRONG_TIER_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STRONG_ONLY_ESTIMATED_FIELD_NUMBER: _ClassVar[int]
    STRONG_PASSES_FIELD_NUMBER: _ClassVar[int]
    TOKENS_REPLACED_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[ReceiptLine]
    total: float
    strong_tier: str
    strong_only: float
    strong_only_prompt_tokens: int
    strong_only_completion_tokens: int
    strong_only_estimated: bool
    strong_passes: int
    tokens_replaced: int
    def __init__(self, lines: _Optional[_Iterable[_Union[ReceiptLine, _Mapping]]] = ..., total: _Optional[float] = ..., strong_tier: _Optional[str] = ..., strong_only: _Optional[float] = ..., strong_only_prompt_tokens: _Optional[int] = ..., strong_only_completion_tokens: _Optional[int] = ..., strong_only_estimated: _Optional[bool] = ..., strong_passes: _Optional[int] = ..., tokens_replaced: _Optional[int] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "tier", "deferred", "score", "threshold", "rule", "usage", "tiers", "total_latency_ms", "request_id", "finished", "degraded", "degraded_reason", "receipt", "load_shed", "choices", "decided_by", "judgement")
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
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    JUDGEMENT_FIELD_NUMBER: _ClassVar[int]
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
    choices: _containers.RepeatedCompositeFieldContainer[GenerateResponse]
    decided_by: str
    judgement: Judgement
    def __init__(self, text: _Optional[str] = ..., tier: _Optional[str] = ..., deferred: _Optional[bool] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., rule: _Optional[str] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., tiers: _Optional[_Iterable[_Union[TierResult, _Mapping]]] = ..., total_latency_ms: _Optional[float] = ..., request_id: _Optional[str] = ..., finished: _Optional[bool] = ..., degraded: _Optional[bool] = ..., degraded_reason: _Optional[str] = ..., receipt: _Optional[_Union[Receipt, _Mapping]] = ..., load_shed: _Optional[bool] = ..., choices: _Optional[_Iterable[_Union[GenerateResponse, _Mapping]]] = ..., decided_by: _Optional[str] = ..., judgement: _Optional[_Union[Judgement, _Mapping]] = ...) -> None: ...
