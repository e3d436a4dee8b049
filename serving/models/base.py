"""The engine interface and its plain-data types (they cross Ray process boundaries). No Ray here.

An engine serves one model. Per request it streams :class:`Chunk` s (new token ids, their log-probs,
the text delta) and ends with a chunk whose ``final`` holds the finished :class:`Generation`.
Batching lives inside the engine: requests join and leave whenever the engine can take them.
Closing the stream (``aclose()``, or cancelling the task that iterates it) cancels the request; the
engine frees its slot at the next step.
"""

from __future__ import annotations

import abc
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional


class InvalidInput(ValueError):
    """A request a tier refuses (e.g. a prompt over its token limit); the router answers
    INVALID_ARGUMENT with this message."""


class EngineError(RuntimeError):
    """The engine failed a request (not the request's fault)."""


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
    finish_reason: str  # "stop" (end-of-sequence), "length" (hit max_new_tokens) or "cancelled"
    embedding: Optional[list[float]] = None  # final hidden state, mean-pooled over the generated tokens
    tier_ms: float = 0.0  # time inside the engine (queue + generation)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class Chunk:
    """A piece of one request's stream: tokens generated since the previous chunk (possibly several,
    when the consumer is slower than the engine), their log-probs and the text they add. The last
    chunk of a stream carries ``final``."""

    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    text: str = ""
    final: Optional[Generation] = None
    prompt_tokens: int = 0


@dataclass
class EngineStats:
    """Live load of an engine (exported as metrics, shown by ``cascade status``)."""

    engine: str
    running: int = 0           # requests in the running batch
    waiting: int = 0           # requests queued for a slot
    kv_cache_usage: float = 0.0  # share of KV-cache blocks in use (0 for engines without a paged cache)
    tokens_per_s: float = 0.0  # generated tokens per second over the last window
    requests: int = 0          # requests finished since start
    generated_tokens: int = 0  # tokens generated since start


class TokenRate:
    """Generated tokens per second over a sliding window (for EngineStats)."""

    def __init__(self, window_s: float = 5.0):
        self.window_s, self.events, self.total = window_s, [], 0

    def add(self, n: int) -> None:
        if n:
            now = time.monotonic()
            self.events.append((now, n))
            self.total += n
            if len(self.events) > 4096:
                self._trim(now)

    def _trim(self, now: float) -> None:
        cut = now - self.window_s
        i = next((k for k, (t, _) in enumerate(self.events) if t >= cut), len(self.events))
        del self.events[:i]

    @property
    def rate(self) -> float:
        now = time.monotonic()
        self._trim(now)
        return sum(n for _, n in self.events) / self.window_s


class Engine(abc.ABC):
    """One model behind a token-level request stream. Implementations register in
    ``serving.models.ENGINES`` under the name a tier's ``engine.name`` selects."""

    name: str = "?"

    @abc.abstractmethod
    def stream(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        """Chunks of the answer as they are generated; the last one carries ``final``. Closing the
        iterator early cancels the request."""

    @abc.abstractmethod
    def count_tokens(self, req: GenerationRequest) -> int:
        """Prompt length in this model's tokens (chat template applied)."""

    @property
    @abc.abstractmethod
    def context_length(self) -> Optional[int]:
        """Longest prompt + answer the model takes, or None when unknown."""

    @abc.abstractmethod
    def stats(self) -> EngineStats:
        """Live load."""

    def info(self) -> dict:
        """Static facts for ``cascade status`` (model size, device, settings)."""
        return {"engine": self.name}

    def close(self) -> None:
        """Stops background work (threads); the engine takes no requests afterwards."""

    async def generate(self, req: GenerationRequest) -> Generation:
        """The finished answer (collects the stream)."""
        final = None
        async for chunk in self.stream(req):
            final = chunk.final or final
        if final is None:
            raise EngineError(f"{self.name} engine ended a stream without a result")
        return final

    def generate_many(self, reqs: list[GenerationRequest]) -> list[Generation]:
        """Blocking helper for offline use (calibration, benchmarks): every request submitted at
        once, so the engine batches them as it would concurrent traffic."""
        import asyncio

        async def run():
            return await asyncio.gather(*(self.generate(r) for r in reqs))

        return list(asyncio.run(run()))
