"""What both fronts say about an answer: the walk's :class:`Outcome` as the fields of
``cascade.v1.GenerateResponse`` (a plain mapping; the gRPC front builds the message from it, the
OpenAI front sends it as the ``cascade`` object)."""

from __future__ import annotations

from typing import Any, Optional

from serving.core.receipt import Receipt
from serving.core.request import CascadeRequest, Outcome, TierRun


def tier_fields(run: TierRun, include_logprobs: bool) -> dict[str, Any]:
    g = run.generation
    return {
        "tier": run.tier,
        "text": g.text,
        "score": run.score,
        "latency_ms": run.latency_ms,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "token_logprobs": list(g.logprobs) if include_logprobs else [],
        "finish_reason": g.finish_reason,
        "tier_ms": g.tier_ms,
        "decision_tokens": run.decided_at or 0,
        "decided_early": run.decided_early,
        "draft_tokens": g.draft_tokens,
        "draft_accepted_tokens": g.draft_accepted,
        "token_ids": list(g.token_ids) if include_logprobs else [],
        "tokens": list(g.token_texts or []) if include_logprobs else [],
        "top_logprobs": [list(step) for step in g.top_logprobs or []] if include_logprobs else [],
        "verify_skipped": run.verify_skipped,
    }


def receipt_fields(r: Receipt) -> dict[str, Any]:
    return {
        "lines": [
            {
                "tier": x.tier,
                "prompt_tokens": x.prompt_tokens,
                "completion_tokens": x.completion_tokens,
                "cost": x.cost,
                "discarded": x.discarded,
                "judge": x.judge,
            }
            for x in r.lines
        ],
        "total": r.total,
        "strong_tier": r.strong_tier,
        "strong_only": r.strong_only,
        "strong_only_prompt_tokens": r.strong_only_prompt_tokens,
        "strong_only_completion_tokens": r.strong_only_completion_tokens,
        "strong_only_estimated": r.strong_only_estimated,
    }


def response_fields(
    req: CascadeRequest,
    out: Outcome,
    *,
    rule: str,
    default_threshold: float,
    latency_ms: float,
    request_id: str,
    text: Optional[str] = None,
) -> dict[str, Any]:
    """``text``: the answer's text (None: the whole answer; "" for a stream's last message)."""
    tiers = [tier_fields(r, req.wants_logprobs) for r in out.runs]
    return {
        "text": out.answer.text if text is None else text,
        "tier": out.answered_by,
        "deferred": out.deferred,
        "score": out.score,
        "threshold": default_threshold if out.threshold is None else out.threshold,
        "rule": rule,
        "usage": {
            "prompt_tokens": sum(t["prompt_tokens"] for t in tiers),
            "completion_tokens": sum(t["completion_tokens"] for t in tiers),
        },
        "tiers": tiers,
        "total_latency_ms": latency_ms,
        "request_id": request_id,
        "degraded": bool(out.degraded),
        "degraded_reason": out.degraded,
        "receipt": receipt_fields(out.receipt),
        "load_shed": out.load_shed,
        **judge_fields(out, req),
    }


def judge_fields(out: Outcome, req: CascadeRequest) -> dict[str, Any]:
    """``decided_by`` and ``judgement``: which signal decided the first boundary, and its judge's run."""
    first = out.runs[0] if out.runs else None
    if first is None or first.score is None or req.forced:
        return {"decided_by": "", "judgement": None}
    j = first.judge
    if j is None:
        return {"decided_by": "rule", "judgement": None}
    return {
        "decided_by": "judge" if j.decided else "rule",
        "judgement": {
            "judge": j.judge,
            "method": j.method,
            "score": j.score,
            "threshold": j.threshold,
            "latency_ms": j.latency_ms,
            "comparisons": j.comparisons,
            "fallback": j.fallback,
            "window_low": j.window[0],
            "window_high": j.window[1],
        },
    }


def sum_usage(choices: list[dict[str, Any]]) -> dict[str, Any]:
    """The first answer's fields with usage and receipt summed over every answer (n > 1)."""
    out = dict(choices[0])
    out["usage"] = {k: sum(c["usage"][k] for c in choices) for k in ("prompt_tokens", "completion_tokens")}
    r = dict(out["receipt"])
    r["lines"] = [line for c in choices for line in c["receipt"]["lines"]]
    for k in ("total", "strong_only", "strong_only_prompt_tokens", "strong_only_completion_tokens"):
        r[k] = sum(c["receipt"][k] for c in choices)
    r["strong_only_estimated"] = any(c["receipt"]["strong_only_estimated"] for c in choices)
    out["receipt"] = r
    return out
