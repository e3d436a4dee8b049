"""What both fronts say about an answer: the walk's :class:`Outcome` as a :class:`CascadeResponse` (the fields
of ``cascade.v1.GenerateResponse``, typed; the gRPC front builds the message from it, the OpenAI front sends
it as the ``cascade`` object). The receipt is the walk's own :class:`~serving.core.receipt.Receipt`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from serving.core.receipt import Receipt
from serving.core.request import CascadeRequest, JudgeRun, Outcome, TierRun


@dataclass
class Usage:
    """Tokens over every tier call (the discarded ones included)."""

    prompt_tokens: int
    completion_tokens: int


@dataclass
class TierReport:
    """What one tier did for the request, as a response reports it (``cascade.v1.TierResult``)."""

    tier: str
    text: str
    score: Optional[float]
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    token_logprobs: list[float]
    finish_reason: str
    tier_ms: float
    decision_tokens: int
    decided_early: bool
    draft_tokens: int
    draft_accepted_tokens: int
    token_ids: list[int]
    tokens: list[str]
    top_logprobs: list[list[tuple]]  # per token: (token id, log-prob[, text]) alternatives
    verify_skipped: str

    @classmethod
    def of(cls, run: TierRun, include_logprobs: bool) -> TierReport:
        g = run.generation
        return cls(
            tier=run.tier,
            text=g.text,
            score=run.score,
            latency_ms=run.latency_ms,
            prompt_tokens=g.prompt_tokens,
            completion_tokens=g.completion_tokens,
            token_logprobs=list(g.logprobs) if include_logprobs else [],
            finish_reason=g.finish_reason,
            tier_ms=g.tier_ms,
            decision_tokens=run.decided_at or 0,
            decided_early=run.decided_early,
            draft_tokens=g.draft_tokens,
            draft_accepted_tokens=g.draft_accepted,
            token_ids=list(g.token_ids) if include_logprobs else [],
            tokens=list(g.token_texts or []) if include_logprobs else [],
            top_logprobs=[list(step) for step in g.top_logprobs or []] if include_logprobs else [],
            verify_skipped=run.verify_skipped,
        )


@dataclass
class Judgement:
    """What the first boundary's judge did (``cascade.v1.Judgement``)."""

    judge: str
    method: str
    score: float
    threshold: float
    latency_ms: float
    comparisons: int
    fallback: str
    window_low: float
    window_high: float

    @classmethod
    def of(cls, j: JudgeRun) -> Judgement:
        return cls(j.judge, j.method, j.score, j.threshold, j.latency_ms, j.comparisons, j.fallback, *j.window)


@dataclass
class CascadeResponse:
    """One answer as both fronts report it (``cascade.v1.GenerateResponse`` without ``finished``/``choices``)."""

    text: str
    tier: str
    deferred: bool
    score: float
    threshold: float
    rule: str
    usage: Usage
    tiers: list[TierReport]
    total_latency_ms: float
    request_id: str
    degraded: bool
    degraded_reason: str
    receipt: Receipt
    load_shed: bool
    decided_by: str = ""  # which signal decided the first boundary: "rule", "judge"; "" when no rule ran
    judgement: Optional[Judgement] = None  # the first boundary's judge, when it was asked
    choices: list[CascadeResponse] = field(default_factory=list)  # n > 1: every answer (see :func:`merged`)

    @classmethod
    def of(
        cls,
        req: CascadeRequest,
        out: Outcome,
        *,
        rule: str,
        default_threshold: float,
        latency_ms: float,
        request_id: str,
        text: Optional[str] = None,
    ) -> CascadeResponse:
        """``text``: the answer's text (None: the whole answer; "" for a stream's last message)."""
        tiers = [TierReport.of(r, req.wants_logprobs) for r in out.runs]
        decided_by, judgement = _decision(out, req)
        return cls(
            text=out.answer.text if text is None else text,
            tier=out.answered_by,
            deferred=out.deferred,
            score=out.score,
            threshold=default_threshold if out.threshold is None else out.threshold,
            rule=rule,
            usage=Usage(sum(t.prompt_tokens for t in tiers), sum(t.completion_tokens for t in tiers)),
            tiers=tiers,
            total_latency_ms=latency_ms,
            request_id=request_id,
            degraded=bool(out.degraded),
            degraded_reason=out.degraded,
            receipt=out.receipt,
            load_shed=out.load_shed,
            decided_by=decided_by,
            judgement=judgement,
        )


def _decision(out: Outcome, req: CascadeRequest) -> tuple[str, Optional[Judgement]]:
    """``decided_by`` and ``judgement``: which signal decided the first boundary, and its judge's run."""
    first = out.runs[0] if out.runs else None
    if first is None or first.score is None or req.forced:
        return "", None
    j = first.judge
    if j is None:
        return "rule", None
    return ("judge" if j.decided else "rule"), Judgement.of(j)


def merged(choices: list[CascadeResponse]) -> CascadeResponse:
    """n > 1: the first answer with usage and receipt summed over every answer, and every answer under
    ``choices``; one answer: itself."""
    if len(choices) == 1:
        return choices[0]
    first, receipts = choices[0], [c.receipt for c in choices]
    receipt = Receipt(
        lines=[line for r in receipts for line in r.lines],
        total=sum(r.total for r in receipts),
        strong_tier=first.receipt.strong_tier,
        strong_only=sum(r.strong_only for r in receipts),
        strong_only_prompt_tokens=sum(r.strong_only_prompt_tokens for r in receipts),
        strong_only_completion_tokens=sum(r.strong_only_completion_tokens for r in receipts),
        strong_only_estimated=any(r.strong_only_estimated for r in receipts),
        strong_passes=sum(r.strong_passes for r in receipts),
        tokens_replaced=sum(r.tokens_replaced for r in receipts),
    )
    usage = Usage(sum(c.usage.prompt_tokens for c in choices), sum(c.usage.completion_tokens for c in choices))
    return replace(first, usage=usage, receipt=receipt, choices=list(choices))
