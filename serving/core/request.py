"""The walk's request and what it yields: :class:`CascadeRequest` (built by each front from its own
wire format and validated here, once, against the shared limits), :class:`Text` events and the
:class:`Outcome` that ends every walk, with one :class:`TierRun` per tier call."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Optional, Union

from serving.core.decoding import Decoding
from serving.core.errors import BadRequest
from serving.core.receipt import Receipt
from serving.core.types import Generation, GenerationRequest, TopLogprobs

ROLES = ("system", "user", "assistant")


@dataclass
class CascadeRequest:
    """One request to the cascade, after validation."""

    request: GenerationRequest
    tiers: list[str]  # tiers to try, in order
    forced: bool
    threshold: Optional[float]  # the request's override for every boundary; None: configured / controller
    include_logprobs: bool = False
    stream: bool = False  # the caller sends text as it comes: the last tier streams tokens
    token_alpha: Optional[float] = None  # the request's alpha for a token-level cascade's rule; None: configured

    def variant(self, k: int) -> CascadeRequest:
        """The request for the k-th of n answers: the same, with seed + k when it is seeded (each answer its
        own draw)."""
        d = self.request.decoding
        decoding = replace(d, seed=d.seed + k) if d.seed is not None else d
        return replace(self, request=replace(self.request, decoding=decoding))

    @property
    def wants_logprobs(self) -> bool:
        return self.include_logprobs or self.request.decoding.top_logprobs is not None

    @classmethod
    def build(
        cls,
        *,
        prompt: str = "",
        messages: Sequence[dict] = (),
        max_new_tokens: Optional[int] = None,
        force_tier: str = "",
        threshold: Optional[float] = None,
        include_logprobs: bool = False,
        stream: bool = False,
        tier_names: Sequence[str],
        limits,
        embed: bool = False,
        decoding: Optional[Decoding] = None,
        token_alpha: Optional[float] = None,
    ) -> CascadeRequest:
        """Checks a request against the shared ``limits`` (``serving.config.Limits``) and the tiers;
        BadRequest names the field. ``messages``: role/content mappings whose content is a string."""
        if prompt and messages:
            raise BadRequest("set either `prompt` or `messages`, not both")
        if len(messages) > limits.max_messages:
            raise BadRequest(f"has {len(messages)} entries; the limit is {limits.max_messages}", "messages")
        if messages:
            for i, m in enumerate(messages):
                if m["role"] not in ROLES:
                    raise BadRequest(f"must be one of {list(ROLES)}, got {m['role']!r}", f"messages[{i}].role")
                if not m["content"].strip():
                    raise BadRequest("must not be empty", f"messages[{i}].content")
            if messages[-1]["role"] != "user":
                raise BadRequest("the last of `messages` must have role 'user'")
            size = sum(len(m["content"]) for m in messages)
        else:
            if not prompt.strip():
                raise BadRequest("must not be empty (or send `messages`)", "prompt")
            size = len(prompt)
        if size > limits.max_prompt_chars:
            raise BadRequest(f"is {size} characters; the limit is {limits.max_prompt_chars}", "prompt")
        if max_new_tokens is not None and not 1 <= max_new_tokens <= limits.max_new_tokens:
            raise BadRequest(
                f"must be between 1 and {limits.max_new_tokens} (0 = tier default), got {max_new_tokens}",
                "max_new_tokens",
            )
        if force_tier and force_tier not in tier_names:
            raise BadRequest(f"{force_tier!r} is not a tier; known tiers: {list(tier_names)}", "force_tier")
        if threshold is not None and not math.isfinite(threshold):
            raise BadRequest(f"must be a finite number, got {threshold}", "threshold")
        if token_alpha is not None and not (math.isfinite(token_alpha) and 0.0 <= token_alpha <= 1.0):
            raise BadRequest(f"must be between 0 and 1, got {token_alpha}", "token_alpha")
        req = GenerationRequest(
            prompt=prompt,
            messages=[{"role": m["role"], "content": m["content"]} for m in messages],
            max_new_tokens=max_new_tokens,
            embed=embed,
            decoding=(decoding or Decoding()).check(),
        )
        tiers = [force_tier] if force_tier else list(tier_names)
        return cls(req, tiers, bool(force_tier), threshold, include_logprobs, stream, token_alpha)


@dataclass
class TierRun:
    """What one tier did for a request."""

    tier: str
    generation: Generation  # finish_reason "deferred": the rule stopped it early (its tokens so far)
    score: Optional[float]  # the rule's score, for a tier that may defer onward
    latency_ms: float  # wall time of the call as the walk saw it
    decided_at: Optional[int] = None  # answer tokens the rule had read when it decided
    decided_early: bool = False  # decided before the tier's answer was complete
    verify_skipped: str = ""  # "sampled": on_defer verify was skipped for this sampled request (regenerated)
    judge: Optional[JudgeRun] = None  # the boundary's judge, when its window held the score


@dataclass
class JudgeRun:
    """What a boundary's judge did for a request (``deferral.judge``)."""

    judge: str  # the deployment (or tier) that judged
    method: str
    score: float  # the judge's score (NaN when it failed)
    threshold: float  # the judge's threshold
    latency_ms: float
    comparisons: int  # prompts scored (one prefill each)
    prompt_tokens: int = 0  # judge tokens read (the receipt prices them)
    fallback: str = ""  # why the judge gave no verdict (the rule's stood): "timeout", "unavailable", ...
    window: tuple[float, float] = (float("-inf"), float("inf"))

    @property
    def decided(self) -> bool:
        return not self.fallback


@dataclass
class Text:
    """Answer text certain to be part of the answer, from ``tier``."""

    tier: str
    text: str
    # the tokens the text covers, when the tier sent them (the last tier's stream); their log-probs and
    # texts when the request asked for log-probs
    token_ids: list[int] = field(default_factory=list, compare=False)
    logprobs: list[float] = field(default_factory=list, compare=False)
    token_texts: Optional[list[str]] = field(default=None, compare=False)
    top_logprobs: Optional[TopLogprobs] = field(default=None, compare=False)
    prompt_tokens: int = field(default=0, compare=False)


@dataclass
class Outcome:
    answer: Generation
    answered_by: str
    deferred: bool
    score: float  # the first tier's confidence (NaN when it has none)
    threshold: Optional[float]  # the threshold at the first boundary (None when no rule ran)
    runs: list[TierRun] = field(default_factory=list)
    degraded: str = ""  # why the answer is an earlier tier's, when a later tier failed
    receipt: Optional[Receipt] = None
    load_shed: bool = False  # an answer kept only because load-aware deferral had lowered its threshold


Event = Union[Text, Outcome]
