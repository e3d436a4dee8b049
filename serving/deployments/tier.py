"""One cascade tier: a model backend behind dynamic batching."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, AsyncIterator, Union

from ray import serve

from serving.config import Tier
from serving.models import Generation, GenerationRequest, HFBackend

_END = object()


@serve.deployment(ray_actor_options={"num_cpus": 1})
class TierDeployment:
    def __init__(self, tier: dict[str, Any]):
        self.tier = Tier.model_validate(tier)
        self.backend = HFBackend(self.tier.model, self.tier.generation)
        self.generate_batch.set_max_batch_size(self.tier.batching.max_batch_size)
        self.generate_batch.set_batch_wait_timeout_s(self.tier.batching.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def generate_batch(self, reqs: list[GenerationRequest]) -> list[Generation]:
        # The forward pass runs off the event loop, so health checks and queueing go on meanwhile.
        return await asyncio.to_thread(self.backend.generate, reqs)

    async def generate(self, req: GenerationRequest) -> Generation:
        t0 = time.perf_counter()
        gen = await self.generate_batch(req)
        gen.tier_ms = (time.perf_counter() - t0) * 1e3
        return gen

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Union[str, Generation]]:
        """Text deltas as they are generated, then the finished Generation (unbatched)."""
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
                "max_batch_size": self.tier.batching.max_batch_size}
