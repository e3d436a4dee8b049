"""One cascade tier: an engine (which batches on its own) behind a streaming Serve method."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import asdict
from typing import Any, AsyncIterator, Optional

from ray import serve

from serving.autoscaling import engine_metrics
from serving.config import Tier
from serving.deployments.metrics import Metrics
from serving.deferral.incremental import StopRule, Verdict
from serving.models import Chunk, Draft, Generation, GenerationRequest, InvalidInput, build_engine, verify_draft

log = logging.getLogger("ray.serve")  # Serve stamps these lines with the request id
ENGINE_METRICS = ("cascade_engine_running", "cascade_engine_waiting", "cascade_engine_kv_cache_usage",
                  "cascade_engine_tokens_per_s")
STATS_PERIOD_S = 2.0


@serve.deployment(ray_actor_options={"num_cpus": 1})
class TierDeployment:
    def __init__(self, tier: dict[str, Any]):
        self.tier = Tier.model_validate(tier)
        self.engine = build_engine(self.tier)
        self.max_prompt_tokens = self._prompt_limit()
        self.metrics = Metrics(ENGINE_METRICS)
        self._stats_task: Optional[asyncio.Task] = None

    def _prompt_limit(self) -> Optional[int]:
        if self.tier.max_prompt_tokens:
            return self.tier.max_prompt_tokens
        ctx = self.engine.context_length
        return max(ctx - self.tier.generation.max_new_tokens, 1) if ctx else None

    def _check(self, req: GenerationRequest) -> None:
        """Refuses a prompt this tier cannot take, before it reaches the engine."""
        ctx = self.engine.context_length
        if self.max_prompt_tokens is None and ctx is None:
            return
        n = self.engine.count_tokens(req)
        if self.max_prompt_tokens is not None and n > self.max_prompt_tokens:
            raise InvalidInput(f"prompt is {n} tokens for tier {self.tier.name!r}; its limit is "
                               f"{self.max_prompt_tokens} (tiers[].max_prompt_tokens)")
        new = req.max_new_tokens or self.tier.generation.max_new_tokens
        if ctx is not None and n + new > ctx:
            raise InvalidInput(f"prompt ({n} tokens) + max_new_tokens ({new}) exceed tier {self.tier.name!r}'s "
                               f"context of {ctx} tokens; lower `max_new_tokens` to at most {max(ctx - n, 0)}")

    async def stream(self, req: GenerationRequest, tokens: bool = True, stop: Optional[StopRule] = None,
                     draft: Optional[Draft] = None) -> AsyncIterator[Chunk]:
        """The engine's chunks for one request. ``tokens=False``: only the last chunk (``final``, the whole
        answer; one message instead of one per decoding step). ``stop``: the boundary's rule, applied here
        as tokens come out of the engine: nothing is sent until its verdict; on DEFER the request is
        cancelled at once and the last chunk carries what was generated (``finish_reason`` "deferred");
        on ACCEPT the held tokens go out and the rest follows. A caller that goes away (Serve cancels
        this generator) cancels the request in the engine, which frees its slot at the next step.
        ``draft``: speculative deferral — an earlier tier's answer, verified in one forward pass; its
        prefix that agrees with this model's greedy choices is kept, this model's own token follows at
        the first disagreement, and decoding goes on from there (greedy: the answer equals this tier's own)."""
        self._start_stats()
        self._check(req)
        t0 = time.perf_counter()
        offered = 0
        if draft is not None:
            req, offered, done = await verify_draft(self.engine, req, draft,
                                                    req.max_new_tokens or self.tier.generation.max_new_tokens)
            if done is not None:  # the agreeing draft already holds the whole answer
                done.tier_ms = (time.perf_counter() - t0) * 1e3
                yield Chunk(final=done, prompt_tokens=done.prompt_tokens,
                            **(dict(token_ids=done.token_ids, logprobs=done.logprobs, text=done.text) if tokens else {}))
                return
        decision = stop.decision() if stop is not None else None
        ids, lps, text, prompt_tokens = [], [], "", 0
        sent, sent_text = 0, 0  # how much of ids / text has gone out

        def unsent(**extra) -> Chunk:
            return Chunk(token_ids=ids[sent:], logprobs=lps[sent:], text=text[sent_text:], prompt_tokens=prompt_tokens,
                         **extra)

        it = self.engine.stream(req)
        try:
            async for chunk in it:
                ids += chunk.token_ids
                lps += chunk.logprobs
                text += chunk.text
                prompt_tokens = chunk.prompt_tokens or prompt_tokens
                verdict = Verdict.UNDECIDED if decision is None else decision.verdict
                if decision is not None and verdict is Verdict.UNDECIDED and chunk.token_ids:
                    verdict = decision.push(chunk.logprobs, stop.threshold)
                    if verdict is Verdict.DEFER and chunk.final is None:
                        yield Chunk(prompt_tokens=prompt_tokens, final=Generation(
                            text=text, token_ids=ids, logprobs=lps, prompt_tokens=prompt_tokens,
                            finish_reason="deferred", tier_ms=(time.perf_counter() - t0) * 1e3,
                            tokenizer=self.engine.tokenizer_id))
                        return  # closing the engine's stream cancels the request
                if chunk.final is not None:
                    if draft is not None:
                        chunk.final.draft_tokens, chunk.final.draft_accepted = offered, len(req.prefix_ids) - 1
                    yield unsent(final=chunk.final) if tokens else Chunk(final=chunk.final, prompt_tokens=prompt_tokens)
                    return
                if tokens and (decision is None or verdict is Verdict.ACCEPT):
                    yield unsent()
                    sent, sent_text = len(ids), len(text)
        except asyncio.CancelledError:
            log.info("cancelled by the caller after %.0f ms", (time.perf_counter() - t0) * 1e3)
            raise
        finally:
            await it.aclose()

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
        """The engine's load, for Serve's autoscaler (serving/autoscaling.py: EngineLoad)."""
        s = self.engine.stats()
        return engine_metrics(s.running, s.waiting, s.kv_cache_usage)

    def check_health(self) -> None:
        healthy = getattr(self.engine, "healthy", None)
        if healthy is not None and not healthy():
            raise RuntimeError(f"tier {self.tier.name!r}: the {self.engine.name} engine stopped")

    async def stats(self) -> dict[str, Any]:
        self._start_stats()
        return {"tier": self.tier.name, "replica": serve.get_replica_context().replica_id.unique_id,
                "threads": threading.active_count(), **asdict(self.engine.stats())}

    def info(self) -> dict[str, Any]:
        return {"tier": self.tier.name, **self.engine.info(), "max_prompt_tokens": self.max_prompt_tokens}

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
