"""The engine interface: what every engine implements, its options base and its live stats. No Ray here,
no torch at import (the request/answer types it streams are ``serving.core.types``).

An engine serves one model. Per request it streams :class:`Chunk` s (new token ids, their log-probs,
the text delta) and ends with a chunk whose ``final`` holds the finished :class:`Generation`.
Batching lives inside the engine: requests join and leave whenever the engine can take them.
Closing the stream (``aclose()``, or cancelling the task that iterates it) cancels the request; the
engine frees its slot at the next step.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

from pydantic import BaseModel, ConfigDict

from serving.core.errors import EngineError
from serving.core.types import BlockVerdict, Chunk, Draft, Generation, GenerationRequest, TopLogprobs, final_chunk
from serving.deferral.token_level import TokenAcceptance


class EngineOptions(BaseModel):
    """An engine's options model (``tiers[].engine``); each engine module defines its own subclass with a
    ``name`` literal, and the config's ``engine`` field is the union of them (``serving.engines.ENGINES``)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    returns_embeddings: ClassVar[bool] = True  # the engine can return an answer's embedding (post_hoc_embed)

    def placement(self, opts: dict[str, Any], device: str) -> dict[str, Any]:
        """Serve deployment options for a replica of this engine on ``device`` (default: as configured)."""
        return opts

    def check_tier(self, device: str, ray_actor_options: dict[str, Any]) -> None:
        """Raises ValueError when these options cannot run as configured (checked when the config loads)."""


@dataclass
class EngineStats:
    """Live load of an engine (exported as metrics, shown by ``cascade status``)."""

    engine: str
    running: int = 0  # requests in the running batch
    waiting: int = 0  # requests queued for a slot
    kv_cache_usage: float = 0.0  # share of KV-cache blocks in use (0 for engines without a paged cache)
    tokens_per_s: float = 0.0  # generated tokens per second over the last window
    requests: int = 0  # requests finished since start
    generated_tokens: int = 0  # tokens generated since start
    cached_tokens: int = 0  # prompt tokens read from a prefix cache since start (engines with one: vllm)
    draft_tokens: int = 0  # tokens a draft model proposed since start (vllm with engine.draft)
    accepted_draft_tokens: int = 0  # of those, the ones the model accepted


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
    ``serving.engines.ENGINES`` under the name a tier's ``engine.name`` selects."""

    name: str = "?"
    # The Decoding fields (serving.core.decoding) this engine honours per request when a request sets
    # them away from their defaults; the tier refuses a request that sets any other, naming the field and
    # itself. ``stop`` (stop strings) is the tier's, for every engine (serving.core.stops).
    decoding_support: ClassVar[frozenset[str]] = frozenset()

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

    @abc.abstractmethod
    async def score(
        self, req: GenerationRequest, continuation: list[int], fixed: int = 0
    ) -> tuple[list[float], list[int], list[float]]:
        """Prefill only, one forward over the prompt + ``continuation``: each continuation token's
        log-prob, and this model's greedy token with its log-prob at every position plus the next. The first
        ``fixed`` continuation tokens are context only (an answer's settled prefix): nothing is returned for
        them, so an engine with a prefix cache may take them from it."""

    async def choice_logprobs(self, reqs: list[GenerationRequest], choices: list[int]) -> list[list[float]]:
        """Prefill only (a judge's read): for each request, the log-prob of each of the ``choices`` token ids as
        the first token after its prompt. Default: one :meth:`score` of each choice (engines with a batched
        forward read every request and choice from one pass: the transformers engines)."""
        import asyncio

        async def one(req: GenerationRequest) -> list[float]:
            return [(await self.score(req, [c]))[0][0] for c in choices]

        return list(await asyncio.gather(*(one(r) for r in reqs)))

    async def prompt_logprobs(
        self, req: GenerationRequest, top_k: int = 0
    ) -> tuple[list[int], list[float], TopLogprobs]:
        """Prefill only: the prompt's token ids (chat template applied), each token's log-prob given the
        ones before it (the first token has none: NaN), and with ``top_k`` its top-k alternatives per
        position. What OpenAI's ``echo`` + ``logprobs`` returns. Engines without it raise EngineError."""
        raise EngineError(f"the {self.name} engine cannot score a prompt")

    def info(self) -> dict:
        """Static facts for ``cascade status`` (model size, device, settings)."""
        return {"engine": self.name}

    # ``self.codec`` (set by every engine): its model's tokenizer and chat template (serving/engines/hf.py:
    # HFTokenizer; the transformers engines' HFModel, which also holds the weights, is one)
    @property
    def tokenizer_id(self) -> str:
        return self.codec.tokenizer_id

    def encode_text(self, text: str) -> list[int]:
        """Token ids of an answer text in this engine's vocabulary (no special tokens added)."""
        return self.codec.tokenizer(text, add_special_tokens=False)["input_ids"]

    @property
    def eos_ids(self) -> list[int]:
        return self.codec.eos_ids

    @property
    def vocab_size(self) -> int:
        return len(self.codec.tokenizer)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Each token's own text (special tokens spelled out), as OpenAI's log-probs name tokens."""
        tok = self.codec.tokenizer
        return [tok.decode([i], skip_special_tokens=False) for i in ids]

    def decode(self, ids: list[int]) -> str:
        return self.codec.decode(ids)

    def close(self) -> None:  # noqa: B027  (optional: engines without background work have nothing to stop)
        """Stops background work (threads); the engine takes no requests afterwards."""

    async def generate(self, req: GenerationRequest) -> Generation:
        """The finished answer (collects the stream)."""
        try:
            return (await final_chunk(self.stream(req))).final
        except EOFError:
            raise EngineError(f"{self.name} engine ended a stream without a result") from None

    def run(self, coro):
        """Blocking: runs ``coro`` on this engine's own event loop, kept across calls (vLLM's engine stays
        bound to the loop it first ran on). For offline use, tests and benchmarks; not inside a running loop."""
        import asyncio

        if getattr(self, "_own_loop", None) is None:
            self._own_loop = asyncio.new_event_loop()
        return self._own_loop.run_until_complete(coro)

    def generate_many(self, reqs: list[GenerationRequest]) -> list[Generation]:
        """Blocking helper for offline use (calibration, benchmarks): every request submitted at
        once, so the engine batches them as it would concurrent traffic."""
        import asyncio

        async def run():
            return await asyncio.gather(*(self.generate(r) for r in reqs))

        return list(self.run(run()))


def agreeing_prefix(draft: list[int], greedy: list[int]) -> int:
    """How many leading draft tokens equal the verifier's own greedy choices (``greedy[i]`` is its
    choice at draft position i): the part of the draft greedy decoding would have produced itself."""
    k = 0
    while k < len(draft) and draft[k] == greedy[k]:
        k += 1
    return k


async def verify_draft(
    engine: Engine, req: GenerationRequest, draft: Draft, max_new: int
) -> tuple[GenerationRequest, int, Optional[Generation]]:
    """Speculative deferral at ``engine``'s tier: one forward over prompt + draft; the agreeing prefix is
    kept and this model's own token follows at the first disagreement. Returns (the request that decodes
    on from that prefix, draft tokens offered, or the finished answer when the prefix already ends it).
    Greedy decoding from there gives exactly this model's greedy answer. A draft from another vocabulary
    is re-tokenised from its text (still exact; special tokens in the draft are lost, so less is kept)."""
    import dataclasses

    ids = draft.token_ids if draft.tokenizer == engine.tokenizer_id else engine.encode_text(draft.text)
    ids = list(ids)[:max_new]
    lps, greedy, greedy_lps = await engine.score(req, ids)
    k = agreeing_prefix(ids, greedy)
    prefix, prefix_lps = ids[:k] + [greedy[k]], lps[:k] + [greedy_lps[k]]
    end = next((i for i, t in enumerate(prefix) if t in engine.eos_ids), None)
    if end is not None:
        prefix, prefix_lps = prefix[: end + 1], prefix_lps[: end + 1]
    prefix, prefix_lps = prefix[:max_new], prefix_lps[:max_new]
    if end is None and len(prefix) < max_new:
        return dataclasses.replace(req, prefix_ids=prefix, prefix_logprobs=prefix_lps), len(ids), None
    gen = Generation(
        text=engine.decode(prefix),
        token_ids=prefix,
        logprobs=prefix_lps,
        prompt_tokens=engine.count_tokens(req),
        finish_reason="stop" if end is not None else "length",
        tokenizer=engine.tokenizer_id,
        draft_tokens=len(ids),
        draft_accepted=min(k, len(prefix)),
    )
    if req.embed:
        import asyncio

        hf = engine.codec  # an engine that embeds is a transformers engine: its codec is the model
        gen.embedding = await asyncio.get_running_loop().run_in_executor(None, hf.embed, hf.encode(req), prefix)
    return req, len(ids), gen


async def verify_block(
    engine: Engine,
    req: GenerationRequest,
    prefix: list[int],
    block: list[int],
    block_logprobs: list[float],
    rule: TokenAcceptance,
) -> BlockVerdict:
    """A token-level cascade's strong pass (``serving.core.speculative``): one forward over prompt + the answer's
    fixed ``prefix`` + the weak tier's draft ``block``; ``rule`` keeps leading block tokens (``block_logprobs``:
    the drafting model's log-prob of each, its q), and this model's greedy token follows them. With the exact
    rule this is speculative decoding: the answer equals this model's greedy one."""
    n = len(prefix)
    end = next((i for i, t in enumerate(block) if t in engine.eos_ids), None)
    block = list(block[: end + 1]) if end is not None else list(block)  # nothing after an end is part of an answer
    lps, greedy, greedy_lps = await engine.score(req, list(prefix) + block, fixed=n)
    k = rule.accepted_prefix(block, block_logprobs, lps, greedy, greedy_lps)
    ids, ids_lps = block[:k], list(lps[:k])
    if not (end is not None and k == len(block)):  # the block's own end kept: no token of ours after it
        ids.append(greedy[k])
        ids_lps.append(greedy_lps[k])
    return BlockVerdict(
        kept=k,
        token_ids=ids,
        logprobs=ids_lps,
        text=engine.decode(list(prefix) + ids),
        stop=ids[-1] in engine.eos_ids,
        prompt_tokens=engine.count_tokens(req),
    )
