"""The cost receipt of one request (no Ray): every tier call that produced tokens, priced with its
tier's ``cost``, and what answering with the last ("strong") tier alone would have cost.

Lines: one per tier call, in order, the discarded ones included (an earlier tier's answer the rule
deferred, also when it stopped it early: its tokens so far; the first call of a degraded request that
had to re-run that tier). A call that failed (timeout, error) produced no tokens we can count and is not
on the receipt.

Strong-only counterfactual: the last tier answering the same prompt alone. Where it ran for this
request (it answered), its real token counts. Where it did not, an *estimate*: the prompt and answer
token counts of the tier that answered, i.e. the prompt as that tier counted it (exact when the tiers
share a tokenizer and chat template, as the shipped ones do) and the strong answer taken to be as long
as the answer given. ``strong_only_estimated`` says which.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from serving.core.types import Generation

if TYPE_CHECKING:  # the config is read, never imported (core stays free of the config's dependencies)
    from serving.config import CascadeConfig, Cost


JUDGED = "judged"  # the finish_reason of a judge call's entry in a receipt's calls (no answer, prompt tokens)


def price(cost: Cost, prompt_tokens: int, completion_tokens: int) -> float:
    return cost.per_request + cost.per_prompt_token * prompt_tokens + cost.per_completion_token * completion_tokens


@dataclass
class Line:
    tier: str
    prompt_tokens: int
    completion_tokens: int
    cost: float
    discarded: bool  # this call's answer is not the one returned
    judge: bool = False  # a judge's read of an answer (prompt tokens only; deferral.judge)


@dataclass
class Receipt:
    lines: list[Line]
    total: float
    strong_tier: str
    strong_only: float
    strong_only_prompt_tokens: int
    strong_only_completion_tokens: int
    strong_only_estimated: bool
    by_tier: dict[str, float] = field(default_factory=dict)  # total cost per tier (the metrics' breakdown)
    strong_passes: int = 0  # the strong tier's forward passes: a decoding step each, a verification each
    tokens_replaced: int = 0  # a token-level cascade: weak draft tokens the strong tier replaced


def make_receipt(cfg: CascadeConfig, calls: list[tuple[str, Generation]], answer: Generation) -> Receipt:
    """``calls``: (tier, generation) of every tier call that produced one, in order; ``answer``: the one
    returned (one of them, by identity)."""
    lines, by_tier = [], {}
    for tier, g in calls:
        judged = g.finish_reason == JUDGED
        c = price(cfg.callee(tier).cost, g.prompt_tokens, g.completion_tokens)
        lines.append(Line(tier, g.prompt_tokens, g.completion_tokens, c, g is not answer and not judged, judged))
        by_tier[tier] = by_tier.get(tier, 0.0) + c
    strong = cfg.tier_names[-1]
    passes = sum(strong_passes(g) for tier, g in calls if tier == strong)
    replaced = sum(g.replaced for tier, g in calls if tier == strong)
    ran = next((g for tier, g in calls if tier == strong and g is answer), None)
    basis = ran or answer
    return Receipt(
        lines,
        sum(by_tier.values()),
        strong,
        price(cfg.tier(strong).cost, basis.prompt_tokens, basis.completion_tokens),
        basis.prompt_tokens,
        basis.completion_tokens,
        ran is None,
        by_tier,
        passes,
        replaced,
    )


def strong_passes(g: Generation) -> int:
    """Forward passes a tier ran for one call: a token-level cascade's verifications; a lossless verification
    and the decoding steps after the kept prefix (its own token at the first disagreement came with it); else
    one step a token (the first from the prompt's forward)."""
    if g.finish_reason == JUDGED:
        return 0
    if g.passes:
        return g.passes
    if g.draft_tokens:
        return 1 + max(g.completion_tokens - g.draft_accepted - 1, 0)
    return g.completion_tokens


class CostTotals:
    """Running totals over the receipts of one router replica (for ``cascade status``)."""

    def __init__(self):
        self.requests, self.total, self.strong_only = 0, 0.0, 0.0
        self.by_tier: dict[str, float] = {}

    def add(self, r: Receipt) -> None:
        self.requests += 1
        self.total += r.total
        self.strong_only += r.strong_only
        for tier, c in r.by_tier.items():
            self.by_tier[tier] = self.by_tier.get(tier, 0.0) + c

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "total": self.total,
            "strong_only": self.strong_only,
            "saved": self.strong_only - self.total,
            "by_tier": dict(self.by_tier),
        }
