"""``static`` engine: the measured baseline. Requests that arrive within ``batch_wait_timeout_s`` form a
left-padded batch that ``model.generate`` runs to completion; a request that arrives meanwhile waits
for the whole batch, and a row that ends early keeps its slot until the longest row ends. Its stream
is one chunk with the whole answer. Kept to measure the continuous engine against (and for a model
whose architecture transformers' continuous batching cannot run).

A request with non-default decoding controls (``serving.core.decoding``) is not batched: it decodes alone
on the same worker thread (``serving.engines.hf_generate``), streamed token by token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import TYPE_CHECKING, ClassVar, Literal, Optional

from pydantic import Field

from serving.core.types import Chunk, Generation, GenerationRequest
from serving.engines.base import Engine, EngineOptions, EngineStats, TokenRate
from serving.engines.controls import ENGINE_FIELDS, needs

if TYPE_CHECKING:
    import torch

    from serving.config import Tier


class StaticEngineConfig(EngineOptions):
    """The baseline: requests that arrive within ``batch_wait_timeout_s`` form one batch that
    ``model.generate`` runs to completion."""

    name: Literal["static"]
    max_batch_size: int = Field(16, ge=1, le=1024)
    batch_wait_timeout_s: float = Field(0.005, ge=0, le=10)


def _cancelled(events: list[threading.Event]):
    """A stopping criterion that ends the rows whose request was cancelled; generation stops once every
    row has ended."""
    import torch
    from transformers import StoppingCriteria

    class Cancelled(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
            return torch.tensor([e.is_set() for e in events], dtype=torch.bool, device=input_ids.device)

    return Cancelled()


class StaticEngine(Engine):
    name = "static"
    decoding_support: ClassVar[frozenset[str]] = ENGINE_FIELDS

    def __init__(self, tier: Tier):
        from serving.engines.hf import HFModel  # torch and transformers load with the engine, not the module
        from serving.engines.hf_generate import SoloDecoder

        opts: StaticEngineConfig = tier.engine
        self.max_batch, self.wait_s = opts.max_batch_size, opts.batch_wait_timeout_s
        self.defaults = tier.generation
        self.hf = self.codec = HFModel(tier.model)
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="static-engine")  # the forward passes
        self._queue: Optional[asyncio.Queue] = None
        self._loop = None
        self.running = 0
        self.rate = TokenRate()
        self.finished = 0
        self.solo = SoloDecoder(self.hf, self._worker, rate=self.rate)  # non-default decoding: alone, in turn

    def count_tokens(self, req: GenerationRequest) -> int:
        return self.hf.count_tokens(req)

    @property
    def context_length(self) -> Optional[int]:
        return self.hf.context_length

    # ---- batching --------------------------------------------------------------------------
    def _ensure_batcher(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._queue = loop, asyncio.Queue()
            self._batcher_task = loop.create_task(self._batcher(self._queue))
        return self._queue

    async def _batcher(self, q: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await q.get()]
            deadline = loop.time() + self.wait_s
            while len(items) < self.max_batch:
                left = deadline - loop.time()
                if left <= 0 and q.empty():
                    break
                try:
                    items.append(q.get_nowait() if left <= 0 else await asyncio.wait_for(q.get(), left))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
            items = [it for it in items if not it[2].is_set()]  # given up while queued
            if not items:
                continue
            self.running = len(items)
            try:
                gens = await loop.run_in_executor(
                    self._worker, self.generate_batch, [it[0] for it in items], [it[2] for it in items]
                )
            except Exception as e:
                for _, fut, _ in items:
                    if not fut.done():
                        fut.set_exception(e)
            else:
                for (_, fut, _), g in zip(items, gens):
                    if not fut.done():
                        fut.set_result(g)
            finally:
                self.running = 0

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        if needs(req.decoding, self.defaults):
            async with aclosing(self.solo.stream(req, self.defaults)) as solo:  # closed: cancelled at the next step
                async for chunk in solo:
                    yield chunk
            return
        t0 = time.perf_counter()
        fut = asyncio.get_running_loop().create_future()
        cancel = threading.Event()
        await self._ensure_batcher().put((req, fut, cancel))
        try:
            gen = await fut
        finally:
            cancel.set()  # a cancelled caller's row ends at the next token
        gen.tier_ms = (time.perf_counter() - t0) * 1e3
        self.rate.add(len(gen.token_ids))
        self.finished += 1
        yield Chunk(
            token_ids=gen.token_ids, logprobs=gen.logprobs, text=gen.text, final=gen, prompt_tokens=gen.prompt_tokens
        )

    # ---- the forward passes (worker thread) ----------------------------------------------------
    def generate_batch(
        self, reqs: list[GenerationRequest], cancel: list[threading.Event] | None = None
    ) -> list[Generation]:
        """One left-padded ``model.generate`` over the batch. ``cancel``: one event per request; a set
        event ends that row early (its result is then incomplete and meant to be discarded)."""
        import torch

        with torch.inference_mode():
            return self._generate_batch(reqs, cancel)

    def _generate_batch(self, reqs: list[GenerationRequest], cancel: list[threading.Event] | None) -> list[Generation]:
        import torch
        from transformers import StoppingCriteriaList

        hf = self.hf
        prompts = [hf.encode(r) for r in reqs]
        encoded = [p + list(r.prefix_ids) for p, r in zip(prompts, reqs)]  # a verified draft: decode on from it
        limits = [max((r.max_new_tokens or self.defaults.max_new_tokens) - len(r.prefix_ids), 1) for r in reqs]
        batch = hf.tokenizer.pad({"input_ids": encoded}, padding=True, return_tensors="pt").to(hf.device)
        width = batch["input_ids"].shape[1]
        d = self.defaults
        sampling = (
            dict(do_sample=True, temperature=d.temperature, top_p=d.top_p)
            if d.do_sample
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        )
        out = hf.model.generate(
            **batch,
            max_new_tokens=max(limits),
            **sampling,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=hf.tokenizer.pad_token_id,
            eos_token_id=hf.eos_ids,
            stopping_criteria=StoppingCriteriaList([_cancelled(cancel)]) if cancel else None,
        )
        new = out.sequences[:, width:]
        logits = torch.stack(out.logits, dim=1)[:, : new.shape[1]].float()
        chosen = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for i, limit in enumerate(limits):
            ids, lps = new[i, :limit].tolist(), chosen[i, :limit].tolist()
            stop = next((k for k, t in enumerate(ids) if t in hf.eos_ids), None)
            if stop is not None:
                ids, lps = ids[: stop + 1], lps[: stop + 1]
            reason = "stop" if stop is not None else "length"
            if cancel and cancel[i].is_set():  # ended early; generate() padded the rest of the row
                pad = hf.tokenizer.pad_token_id
                cut = next((k for k, t in enumerate(ids) if t == pad), len(ids))
                ids, lps, reason = ids[:cut], lps[:cut], "cancelled"
            ids, lps = list(reqs[i].prefix_ids) + ids, list(reqs[i].prefix_logprobs) + lps
            results.append(
                Generation(
                    text=hf.decode(ids),
                    token_ids=ids,
                    logprobs=lps,
                    prompt_tokens=len(prompts[i]),
                    finish_reason=reason,
                    tokenizer=hf.tokenizer_id,
                )
            )
        if any(r.embed and r.prefix_ids for r in reqs):  # rare (a verified draft at a tier that embeds)
            for r, p, g in zip(reqs, prompts, results):
                g.embedding = hf.embed(p, g.token_ids) if r.embed else None
        elif any(r.embed for r in reqs):
            self._embed(out.sequences, batch["attention_mask"], results)
        return results

    def _embed(self, sequences: torch.Tensor, prompt_mask: torch.Tensor, results: list[Generation]) -> None:
        """Final hidden state, mean-pooled over each answer's generated tokens (one extra forward)."""
        import torch

        hf = self.hf
        width = prompt_mask.shape[1]
        gen_mask = torch.zeros((len(results), sequences.shape[1] - width), dtype=prompt_mask.dtype, device=hf.device)
        for i, g in enumerate(results):
            gen_mask[i, : len(g.token_ids)] = 1
        mask = torch.cat([prompt_mask, gen_mask], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() uses under left padding
        hidden = (
            hf.model(input_ids=sequences, attention_mask=mask, position_ids=positions, output_hidden_states=True)
            .hidden_states[-1]
            .float()
        )
        for i, g in enumerate(results):
            n = max(len(g.token_ids), 1)
            g.embedding = hidden[i, width : width + n].mean(0).tolist()

    async def score(self, req: GenerationRequest, continuation: list[int], fixed: int = 0):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self.hf.score, self.hf.encode(req), list(continuation), fixed)

    async def choice_logprobs(self, reqs: list[GenerationRequest], choices: list[int]):
        loop = asyncio.get_running_loop()
        prompts = [self.hf.encode(r) for r in reqs]
        return await loop.run_in_executor(self._worker, self.hf.choice_logprobs, prompts, list(choices))

    async def prompt_logprobs(self, req: GenerationRequest, top_k: int = 0):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._worker, self.hf.prompt_logprobs, self.hf.encode(req), top_k)

    def stats(self) -> EngineStats:
        waiting = self._queue.qsize() if self._queue is not None else 0
        return EngineStats(
            engine=self.name,
            running=self.running + self.solo.running,
            waiting=waiting,
            tokens_per_s=self.rate.rate,
            requests=self.finished + self.solo.finished,
            generated_tokens=self.rate.total,
        )

    def info(self) -> dict:
        return {
            "engine": self.name,
            **self.hf.info(),
            "max_batch_size": self.max_batch,
            "batch_wait_timeout_s": self.wait_s,
        }

    def close(self) -> None:
        task = getattr(self, "_batcher_task", None)
        if task is not None and not task.done() and task.get_loop() is getattr(self, "_own_loop", None):
            task.cancel()  # the batcher of offline use (Engine.run): stop it on the loop it runs on
            self._own_loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
        self._worker.shutdown(wait=False)
