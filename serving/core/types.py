"""The walk's and the engines' plain-data types: what crosses process boundaries (Ray pickles them) between
the Router, the tiers and their engines. No Ray, no torch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Optional

from serving.core.decoding import Decoding

# Per generated token, its most likely alternatives under the model's unmodified distribution, most
# likely first: (token id, log-prob) pairs. Only when a request asks for them (Decoding.top_logprobs).
TopLogprobs = list[list[tuple[int, float]]]


@dataclass
class GenerationRequest:
    """One prompt for a tier: either raw ``prompt`` text or chat ``messages`` (role/content dicts)."""

    prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    max_new_tokens: Optional[int] = None  # None: the tier's default
    embed: bool = False  # also return the answer's embedding (for rules that read it)
    # The answer's first tokens, already fixed (a verified draft): the engine decodes on from there and
    # returns them as part of the answer, with their log-probs.
    prefix_ids: list[int] = field(default_factory=list)
    prefix_logprobs: list[float] = field(default_factory=list)
    decoding: Decoding = field(default_factory=Decoding)  # the request's decoding controls (default: greedy)


@dataclass
class Generation:
    """A tier's answer with the per-token log-probs the deferral rules read.

    ``token_ids`` and ``logprobs`` cover every generated token, including the end-of-sequence token
    when the model emitted one (its probability says how sure the model is the answer is complete);
    ``text`` is the decoded answer without special tokens.
    """

    text: str
    token_ids: list[int]
    logprobs: list[float]
    prompt_tokens: int
    finish_reason: str  # "stop" (end-of-sequence), "length" (hit max_new_tokens) or "cancelled"
    embedding: Optional[list[float]] = None  # final hidden state, mean-pooled over the generated tokens
    tier_ms: float = 0.0  # time inside the engine (queue + generation)
    tokenizer: str = ""  # the engine's vocabulary fingerprint (tiers that share it can exchange token ids)
    draft_tokens: int = 0  # speculative deferral: tokens of the earlier tier's draft this tier verified
    draft_accepted: int = 0  # of those, the agreeing prefix kept (its own token follows at the first disagreement)
    passes: int = 0  # a token-level cascade's answer: this tier's verification passes
    replaced: int = 0  # ... and the draft tokens it replaced with its own
    top_logprobs: Optional[TopLogprobs] = None  # when the request asked for alternatives (Decoding.top_logprobs)
    token_texts: Optional[list[str]] = None  # each token's text, when the request asked for log-probs

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Draft:
    """An earlier tier's answer (possibly cut short by the rule) for the next tier to verify."""

    token_ids: list[int]
    text: str
    tokenizer: str  # the drafting engine's vocabulary fingerprint: token ids are reused only when it matches


@dataclass
class BlockVerdict:
    """One strong pass of a token-level cascade (``serving.engines.base.verify_block``)."""

    kept: int  # leading block tokens the rule kept
    token_ids: list[int]  # what the answer gains: the kept tokens, then this model's own token (none after an end)
    logprobs: list[float]  # this model's log-prob of each
    text: str  # the answer so far (prefix + token_ids), decoded
    stop: bool  # the answer ends here (end of sequence)
    prompt_tokens: int


@dataclass
class TierDecision:
    """What a tier's rule concluded about its answer (``serving.core.decide``): the tier owns the decision
    and reports it in its last chunk; the walk trusts it. ``verdict`` is "defer" or "accept" against the
    threshold the tier was given (a load-aware boundary's walk sets the threshold in force: it compares
    ``score`` with it, unless the tier already stopped at a certain DEFER)."""

    verdict: str
    score: float
    decided_at: int  # answer tokens the rule had read when it decided
    decided_early: bool  # decided before the answer was complete


@dataclass
class Chunk:
    """A piece of one request's stream: tokens generated since the previous chunk (possibly several,
    when the consumer is slower than the engine), their log-probs and the text they add. The last
    chunk of a stream carries ``final``."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    top_logprobs: Optional[TopLogprobs] = None  # for these tokens, when the request asked for alternatives
    token_texts: Optional[list[str]] = None  # each token's text, when the request asked for log-probs
    final: Optional[Generation] = None
    prompt_tokens: int = 0
    decision: Optional[TierDecision] = None  # on the last chunk, when the call carried a rule


async def final_chunk(chunks: AsyncIterator[Chunk]) -> Chunk:
    """Reads a stream to its last chunk (the one with ``final``) and returns it; closes the stream."""
    try:
        async for chunk in chunks:
            if chunk.final is not None:
                return chunk
    finally:
        await chunks.aclose()
    raise EOFError("the stream ended without a final chunk")
