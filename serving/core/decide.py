"""The boundary's decision, made once, where the tokens come out: the tier applies the rule it was sent
(:class:`~serving.deferral.incremental.StopRule`) to its engine's stream and reports the verdict in
its last chunk (``Chunk.decision``); the walk trusts it. Pure code: the Serve tier
(``serving.serve.tier``) runs it on its engine's stream, the unit tests' fake tiers on theirs.

The protocol, for a call with a rule that may defer (``StopRule.holds``):
- no answer text leaves the tier before the verdict: tokens are held until the rule ACCEPTs (a decision
  window), and from then on flow as they come (when the caller asked for tokens);
- on a certain DEFER the engine's request is closed at once (its slot frees at the next step) and the
  last chunk carries what was generated, ``finish_reason`` "deferred";
- otherwise the last chunk carries the whole answer, its score and the verdict at the threshold sent.
Without a rule, or with ``score_only``, tokens flow at once; ``score_only`` still reports the score.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Optional

from serving.core.types import Chunk, Generation, TierDecision
from serving.deferral.incremental import StopRule, Verdict


async def decide(
    chunks: AsyncIterator[Chunk],
    stop: Optional[StopRule],
    tokens: bool = True,
    *,
    t0: Optional[float] = None,
    tokenizer: str = "",
) -> AsyncIterator[Chunk]:
    """The chunks a tier sends for one call: ``chunks`` is the engine's stream (its last chunk carries
    ``final``), closed when this generator ends. ``tokens=False``: only the last chunk (one message
    instead of one per decoding step)."""
    t0 = time.perf_counter() if t0 is None else t0
    decision = stop.decision() if stop is not None else None
    ids, lps, text, prompt_tokens = [], [], "", 0
    texts, tops = [], []  # per-token texts and alternatives, when the request asked for log-probs
    sent, sent_text = 0, 0  # how much of ids / text has gone out

    def unsent(**extra) -> Chunk:
        return Chunk(
            token_ids=ids[sent:],
            logprobs=lps[sent:],
            text=text[sent_text:],
            prompt_tokens=prompt_tokens,
            token_texts=texts[sent:] if texts else None,
            top_logprobs=tops[sent:] if tops else None,
            **extra,
        )

    try:
        async for chunk in chunks:
            ids += chunk.token_ids
            lps += chunk.logprobs
            texts += chunk.token_texts or []
            tops += chunk.top_logprobs or []
            text += chunk.text
            prompt_tokens = chunk.prompt_tokens or prompt_tokens
            if decision is not None and decision.verdict is Verdict.UNDECIDED and chunk.token_ids:
                verdict = decision.push(chunk.logprobs, stop.early_threshold, may_accept=stop.floor is None)
                if verdict is Verdict.DEFER and chunk.final is None:
                    gen = Generation(
                        text=text,
                        token_ids=ids,
                        logprobs=lps,
                        prompt_tokens=prompt_tokens,
                        finish_reason="deferred",
                        tier_ms=(time.perf_counter() - t0) * 1e3,
                        tokenizer=tokenizer,
                    )
                    yield Chunk(prompt_tokens=prompt_tokens, final=gen, decision=_report(decision, gen))
                    return  # closing the engine's stream cancels the request
            if chunk.final is not None:
                report = None
                if decision is not None:
                    decision.finish(chunk.final.logprobs, stop.threshold, chunk.final.embedding)
                    report = _report(decision, chunk.final)
                yield (
                    unsent(final=chunk.final, decision=report)
                    if tokens
                    else Chunk(final=chunk.final, prompt_tokens=prompt_tokens, decision=report)
                )
                return
            if tokens and (decision is None or not stop.holds or decision.verdict is Verdict.ACCEPT):
                yield unsent()
                sent, sent_text = len(ids), len(text)
    finally:
        await chunks.aclose()


def _report(decision, gen: Generation) -> TierDecision:
    early = gen.finish_reason == "deferred" or decision.decided_at < gen.completion_tokens
    return TierDecision(decision.verdict.value, decision.score, decision.decided_at, early)
