"""One cascade tier: an engine (which batches on its own) behind a streaming method. :class:`TierServer` is the
tier's logic around its engine; :class:`TierDeployment` serves it as a Serve deployment, and a Router co-located
with a tier (``router.colocate_with``) holds one in-process."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import asdict
from typing import Any, Optional

from ray import serve

from serving.config import Tier
from serving.core.coalesce import coalesced
from serving.core.decide import decide
from serving.core.errors import BadRequest, EngineError
from serving.core.stops import stop_at
from serving.core.types import BlockVerdict, Chunk, Draft, GenerationRequest
from serving.deferral.incremental import StopRule
from serving.deferral.token_level import TokenAcceptance
from serving.engines import build_engine, verify_block, verify_draft
from serving.serve.autoscaling import engine_metrics
from serving.serve.metrics import Metrics

log = logging.getLogger("ray.serve")  # Serve stamps these lines with the request id
ENGINE_METRICS = (
    "cascade_engine_running",
    "cascade_engine_waiting",
    "cascade_engine_kv_cache_usage",
    "cascade_engine_tokens_per_s",
)
STATS_PERIOD_S = 2.0


class TierServer:
    def __init__(self, tier: dict[str, Any]):
        self.tier = Tier.model_validate(tier)
        self.engine = build_engine(self.tier)
        self.max_prompt_tokens = self._prompt_limit()
        self.metrics = Metrics(ENGINE_METRICS)
        self._stats_task: Optional[asyncio.Task] = None
        self.coalesce_s = 0.0  # in the Router's process (router.colocate_with): every chunk as it comes

    @classmethod
    async def start(cls, tier: dict[str, Any]) -> TierServer:
        """Built and warmed up (what a Router co-located with this tier holds)."""
        self = cls(tier)
        await self._warm()
        return self

    async def _warm(self) -> None:
        """One token through the engine before the replica reports RUNNING, so that no client request pays for
        the engine's first step (its threads, lazy kernels); a failure here is logged and left to the requests."""
        t0 = time.perf_counter()
        try:
            await self.engine.generate(GenerationRequest(prompt="1 + 1", max_new_tokens=1))
        except Exception as e:
            log.warning("warm-up of tier %s failed (%s: %s)", self.tier.name, type(e).__name__, e)
            return
        log.info("warmed up tier %s in %.0f ms", self.tier.name, (time.perf_counter() - t0) * 1e3)

    def _prompt_limit(self) -> Optional[int]:
        if self.tier.max_prompt_tokens:
            return self.tier.max_prompt_tokens
        ctx = self.engine.context_length
        return max(ctx - self.tier.generation.max_new_tokens, 1) if ctx else None

    def _check_decoding(self, req: GenerationRequest) -> None:
        """Refuses decoding controls this tier's engine cannot honour per request, naming the field and the tier
        (stop strings are the tier's own, for every engine; log-probs of the chosen tokens come with every
        answer)."""
        d, support = req.decoding, self.engine.decoding_support
        for f in d.requested():
            if f == "stop" or (f == "top_logprobs" and d.top_logprobs == 0) or f in support:
                continue
            raise BadRequest(
                f"is not honoured per request by tier {self.tier.name!r} (engine {self.engine.name}, which honours "
                f"{sorted(support | {'stop'})}); leave it unset, or send the request to another tier",
                f,
            )
        vocab = self.engine.vocab_size if d.stop_token_ids or d.logit_bias else None  # only when ids were sent
        if vocab:
            bad = [i for i in list(d.stop_token_ids) + list(d.logit_bias) if i >= vocab]
            if bad:
                field = "stop_token_ids" if bad[0] in d.stop_token_ids else "logit_bias"
                raise BadRequest(
                    f"has token id {bad[0]}, not in tier {self.tier.name!r}'s vocabulary of {vocab}", field
                )

    def _check(self, req: GenerationRequest) -> None:
        """Refuses a prompt this tier cannot take, before it reaches the engine."""
        self._check_decoding(req)
        ctx = self.engine.context_length
        if self.max_prompt_tokens is None and ctx is None:
            return
        n = self.engine.count_tokens(req)
        if self.max_prompt_tokens is not None and n > self.max_prompt_tokens:
            raise BadRequest(
                f"is {n} tokens for tier {self.tier.name!r}; its limit is {self.max_prompt_tokens} "
                "(tiers[].max_prompt_tokens)",
                "prompt",
            )
        new = req.max_new_tokens or self.tier.generation.max_new_tokens
        if ctx is not None and n + new > ctx:
            raise BadRequest(
                f"is {new}, and with the prompt's {n} tokens that exceeds tier {self.tier.name!r}'s "
                f"context of {ctx} tokens; lower it to at most {max(ctx - n, 0)}",
                "max_new_tokens",
            )

    async def stream(
        self,
        req: GenerationRequest,
        tokens: bool = True,
        stop: Optional[StopRule] = None,
        draft: Optional[Draft] = None,
    ) -> AsyncIterator[Chunk]:
        """The engine's chunks for one request, with the boundary's rule ``stop`` applied here, next to
        the engine (``serving.core.decide``: nothing is sent until its verdict; a certain DEFER cancels
        the request at once; the last chunk carries the verdict). ``tokens=False``: only the last chunk.
        A caller that goes away (Serve cancels this generator) cancels the request in the engine, which
        frees its slot at the next step. ``draft``: speculative deferral — an earlier tier's answer,
        verified in one forward pass; its prefix that agrees with this model's greedy choices is kept,
        this model's own token follows at the first disagreement, and decoding goes on from there
        (greedy: the answer equals this tier's own)."""
        self._start_stats()
        self._check(req)
        t0 = time.perf_counter()
        chunks = None
        if draft is not None:
            req, offered, done = await verify_draft(
                self.engine, req, draft, req.max_new_tokens or self.tier.generation.max_new_tokens
            )
            if done is not None:  # the agreeing draft already holds the whole answer
                done.tier_ms = (time.perf_counter() - t0) * 1e3
                chunks = _one(
                    Chunk(
                        final=done,
                        prompt_tokens=done.prompt_tokens,
                        token_ids=done.token_ids,
                        logprobs=done.logprobs,
                        text=done.text,
                    )
                )
            else:
                chunks = _counting_draft(self.engine.stream(req), offered, len(req.prefix_ids) - 1)
        chunks = chunks or self.engine.stream(req)
        if req.decoding.stop:  # stop strings: the tier's, for every engine (text held back while it may be one)
            chunks = stop_at(chunks, req.decoding.stop, self.engine.tokenizer_id)
        if req.decoding.top_logprobs is not None:  # the request asked for log-probs: each token's text too
            chunks = _with_token_texts(chunks, self.engine)
        out = decide(chunks, stop, tokens, t0=t0, tokenizer=self.engine.tokenizer_id)
        if self.coalesce_s > 0:  # tiers[].stream_interval_ms: one message per interval, not per decoding step
            out = coalesced(out, self.coalesce_s)
        try:
            async with aclosing(out) as messages:
                async for chunk in messages:
                    yield chunk
        except asyncio.CancelledError:
            log.info("cancelled by the caller after %.0f ms", (time.perf_counter() - t0) * 1e3)
            raise

    async def verify_block(
        self,
        req: GenerationRequest,
        prefix: list[int],
        block: list[int],
        block_logprobs: list[float],
        rule: TokenAcceptance,
        tokenizer: str,
    ) -> Optional[BlockVerdict]:
        """A token-level cascade's strong pass (``serving.core.speculative``): the weak tier's ``block``
        after the answer's fixed ``prefix``, in one forward; ``rule`` keeps leading block tokens and this
        model's own token follows. None when the draft's vocabulary (``tokenizer``) is not this engine's:
        token ids cannot be exchanged, and the walk regenerates instead."""
        self._start_stats()
        self._check(req)
        if tokenizer != self.engine.tokenizer_id:
            return None
        return await verify_block(self.engine, req, prefix, block, block_logprobs, rule)

    async def prompt_logprobs(self, req: GenerationRequest, top_k: int = 0) -> tuple[list, list, list]:
        """echo + logprobs: the prompt's token texts, log-probs (the first: NaN) and top-k alternatives
        as (id, log-prob, text), from one scoring pass (no decoding)."""
        self._check(req)
        try:
            ids, lps, tops = await self.engine.prompt_logprobs(req, top_k)
        except EngineError as e:
            raise BadRequest(f"cannot be answered by tier {self.tier.name!r}: {e}", "echo") from None
        return self.engine.token_texts(ids), lps, _named(tops, self.engine) if tops else []

    async def judge(self, prompts: list[list[dict[str, str]]], verdicts: list[str]) -> dict[str, Any]:
        """A judge's read (``deferral.judge``): one prefill per prompt (chat messages, this model's chat
        template applied), all of them in one batched forward where the engine has one, no decoding. Returns
        each prompt's log-probs of the verdicts' first tokens and the prompt tokens read (for the receipt)."""
        self._start_stats()
        t0 = time.perf_counter()
        reqs = [GenerationRequest(messages=m) for m in prompts]
        ids = [self.engine.encode_text(v)[0] for v in verdicts]
        counts = [self.engine.count_tokens(r) for r in reqs]
        ctx = self.engine.context_length
        if ctx is not None and max(counts, default=0) >= ctx:
            raise BadRequest(
                f"a judge prompt is {max(counts)} tokens, over judge {self.tier.name!r}'s context of {ctx}", "judge"
            )
        try:
            lps = await self.engine.choice_logprobs(reqs, ids)
        except EngineError as e:
            raise BadRequest(f"cannot be judged by {self.tier.name!r}: {e}", "judge") from None
        log.info("judged %d prompts (%d tokens) in %.0f ms", len(reqs), sum(counts), (time.perf_counter() - t0) * 1e3)
        return {"logprobs": lps, "prompt_tokens": sum(counts)}

    # ---- operations --------------------------------------------------------------------------
    def _start_stats(self) -> None:
        if self._stats_task is None:
            self._stats_task = asyncio.get_running_loop().create_task(self._export_stats())

    async def _export_stats(self) -> None:
        while True:
            s = self.engine.stats()
            name = self.tier.name
            self.metrics.set("cascade_engine_running", s.running, tier=name, engine=s.engine)
            self.metrics.set("cascade_engine_waiting", s.waiting, tier=name, engine=s.engine)
            self.metrics.set("cascade_engine_kv_cache_usage", s.kv_cache_usage, tier=name, engine=s.engine)
            self.metrics.set("cascade_engine_tokens_per_s", s.tokens_per_s, tier=name, engine=s.engine)
            await asyncio.sleep(STATS_PERIOD_S)

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """The engine's load, for Serve's autoscaler (serving/serve/autoscaling.py: EngineLoad)."""
        s = self.engine.stats()
        return engine_metrics(s.running, s.waiting, s.kv_cache_usage)

    def check_health(self) -> None:
        healthy = getattr(self.engine, "healthy", None)
        if healthy is not None and not healthy():
            raise RuntimeError(f"tier {self.tier.name!r}: the {self.engine.name} engine stopped")

    async def stats(self) -> dict[str, Any]:
        self._start_stats()
        return {
            "tier": self.tier.name,
            "replica": serve.get_replica_context().replica_id.unique_id,
            "threads": threading.active_count(),
            **asdict(self.engine.stats()),
        }

    def info(self) -> dict[str, Any]:
        return {"tier": self.tier.name, **self.engine.info(), "max_prompt_tokens": self.max_prompt_tokens}

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()


@serve.deployment(ray_actor_options={"num_cpus": 1})
class TierDeployment(TierServer):
    async def __init__(self, tier: dict[str, Any]):  # Serve awaits an async constructor before the replica runs
        super().__init__(tier)
        self.coalesce_s = self.tier.stream_interval_ms / 1e3  # across the process boundary: coalesced
        await self._warm()


async def _with_token_texts(chunks: AsyncIterator[Chunk], engine) -> AsyncIterator[Chunk]:
    """Each token's text (and its alternatives' texts: (id, log-prob, text)) on the chunks and the answer,
    for responses with log-probs."""
    try:
        async for chunk in chunks:
            chunk.token_texts = engine.token_texts(chunk.token_ids)
            if chunk.top_logprobs:
                chunk.top_logprobs = _named(chunk.top_logprobs, engine)
            g = chunk.final
            if g is not None:
                g.token_texts = engine.token_texts(g.token_ids)
                if g.top_logprobs:
                    g.top_logprobs = _named(g.top_logprobs, engine)
            yield chunk
    finally:
        await chunks.aclose()


def _named(tops, engine):
    return [[(i, lp, *engine.token_texts([i])) for i, lp, *_ in step] for step in tops]


async def _one(chunk: Chunk) -> AsyncIterator[Chunk]:
    yield chunk


async def _counting_draft(chunks: AsyncIterator[Chunk], offered: int, accepted: int) -> AsyncIterator[Chunk]:
    """The engine's stream of a request decoding on from a verified draft, its answer stamped with the
    draft tokens offered and kept."""
    try:
        async for chunk in chunks:
            if chunk.final is not None:
                chunk.final.draft_tokens, chunk.final.draft_accepted = offered, accepted
            yield chunk
    finally:
        await chunks.aclose()


class InProcessTiers:
    """The walk's tier client over :class:`TierServer` s held in this process (offline benchmarks, tests): each
    tier's own logic and engine, called directly; no Ray, no timeouts, no retries."""

    def __init__(self, servers: dict[str, TierServer]):
        self.servers = servers

    @classmethod
    async def start(cls, cfg) -> InProcessTiers:
        return cls({t.name: await TierServer.start(t.model_dump(mode="json")) for t in cfg.tiers})

    def stream(self, tier: str, req: GenerationRequest, tokens: bool = True, stop=None, draft=None):
        return self.servers[tier].stream(req, tokens, stop, draft)

    async def call(self, name: str, method: str, *args, timeout: Optional[float] = None):
        return await getattr(self.servers[name], method)(*args)

    def close(self) -> None:
        for s in self.servers.values():
            s.engine.close()
