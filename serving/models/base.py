"""Backend-neutral request/response types, plain data so they cross Ray process boundaries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


class InvalidInput(ValueError):
    """A request a tier refuses (e.g. a prompt over its token limit); the router answers
    INVALID_ARGUMENT with this message."""


@dataclass
class GenerationRequest:
    """One prompt for a tier: either raw ``prompt`` text or chat ``messages`` (role/content dicts)."""

    prompt: str = ""
    messages: list[dict[str, str]] = field(default_factory=list)
    max_new_tokens: Optional[int] = None  # None: the tier's default
    embed: bool = False  # also return the answer's embedding (for rules that read it)


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
    finish_reason: str  # "stop" (end-of-sequence) or "length" (hit max_new_tokens)
    embedding: Optional[list[float]] = None  # final hidden state, mean-pooled over the generated tokens
    tier_ms: float = 0.0  # set by the serving tier: time inside its replica (batch wait + generation)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)
