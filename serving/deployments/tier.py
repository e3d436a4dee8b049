"""One cascade tier: a model backend behind dynamic batching."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, AsyncIterator, Optional, Union

from ray import serve

from serving.config import Tier
from serving.models import Generation, GenerationRequest, HFBackend, InvalidInput

log = logging.getLogger("ray.serve")  # Serve stamps these lines with the request id
_END = object()


@serve.deployment(ray_actor_options={"num_cpus": 1})
class TierDeployment:
    def __init__(self, tier: dict[str, Any]):
        self.tier = Tier.model_validate(tier)
        self.backend = HFBackend(self.tier.model, self.tier.generation)
        self.generate_batch.set_max_batch_size(self.tier.batching.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.tier.batching.batch_wait_timeout_s)
        self.max_prompt_tokens = self._prompt_limit()

    def _prompt_limit(self) -> Optional[int]:
        if self.tier.max_prompt_tokens:
            return self.tier.max_prompt_tokens
        ctx = self.backend.context_length
        return max(ctx - self.tier.generation.max_new_tokens, 1) if ctx else None

    def _check(self, req: GenerationRequest) -> None:
        """Refuses a prompt this tier cannot take, before it joins a batch."""
        ctx = self.backend.context_length
        if self.max_prompt_tokens is None and ctx is None:
            return
        n = self.backend.count_tokens(req)
        if self.max_prompt_tokens is not None and n > self.max_prompt_tokens:
            raise InvalidInput(f"prompt is {n} tokens for tier {self.tier.name!r}; its limit is "
                               f"{self.max_prompt_tokens} (tiers[].max_prompt_tokens)")
        new = req.max_new_tokens or self.tier.generation.max_new_tokens
        if ctx is not None and n + new > ctx:
            raise InvalidInput(f"prompt ({n} tokens) + max_new_tokens ({new}) exceed tier {self.tier.name!r}'s "
                               f"context of {ctx} tokens; lower `max_new_tokens` to at most {max(ctx - n, 0)}")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, items: list[tuple[GenerationRequest, threading.Event]]) -> list[Generation]:
        # The forward pass runs off the event loop, so health checks and queueing go on meanwhile.
        reqs, cancel = [r for r, _ in items], [c for _, c in items]
        return await asyncio.to_thread(self.backend.generate, reqs, cancel=cancel)

    async def generate(self, req: GenerationRequest) -> Generation:
        self._check(req)
        t0 = time.perf_counter()
        cancel = threading.Event()
        try:
            gen = await self.generate_batch((req, cancel))
        except asyncio.CancelledError:
            cancel.set()  # the caller gave up: end this row of the batch at the next token
            log.info("cancelled by the caller after %.0f ms", (time.perf_counter() - t0) * 1e3)
            raise
        gen.tier_ms = (time.perf_counter() - t0) * 1e3
        return gen

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Union[str, Generation]]:
        """Text deltas as they are generated, then the finished Generation (unbatched)."""
        self._check(req)
        cancel = threading.Event()
        it = self.backend.stream(req, cancel)
        t0 = time.perf_counter()
        try:
            while (item := await asyncio.to_thread(next, it, _END)) is not _END:
                if isinstance(item, Generation):
                    item.tier_ms = (time.perf_counter() - t0) * 1e3
                yield item
        finally:
            cancel.set()  # the client went away or we finished: stop generating

    def info(self) -> dict[str, Any]:
        b = self.backend
        return {"tier": self.tier.name, "params": b.params, "device": str(b.device), "chat_template": b.use_chat,
                "max_batch_size": self.tier.batching.max_batch_size, "max_prompt_tokens": self.max_prompt_tokens}
