"""``continuous`` engine: transformers' continuous batching (paged KV cache, requests join and leave the
running batch at every decoding step), every request streamed with the chosen tokens' log-probs.

transformers runs one background thread that owns the model; outputs reach the asyncio loop through
``register_result_handler`` (one ``call_soon_threadsafe`` per decoding step for the whole batch).
A request's log-prob is the log-softmax of the logits after the logits processors, which for greedy
decoding are the raw logits: the same numbers the static engine reports.

Per-request decoding controls: continuous batching takes a request's own end-of-sequence ids, so greedy
requests with ``stop_token_ids`` / ``ignore_eos`` stay in the batch. It cannot sample per request while
reporting raw log-probs (its per-request processors run before its log-probs, and its seed is global),
so every other request (sampled, seeded, penalties, min_p, logit_bias, min_tokens, top_logprobs > 0)
decodes alone on the same weights (``serving.engines.hf_generate``), each forward taken while the batch
loop is paused at a step boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from typing import TYPE_CHECKING, ClassVar, Literal, Optional

from pydantic import Field

from serving import compat
from serving.core.errors import EngineError
from serving.core.types import Chunk, Generation, GenerationRequest
from serving.engines.base import Engine, EngineOptions, EngineStats, TokenRate
from serving.engines.controls import ENGINE_FIELDS, EOS_FIELDS, needs, sampling, stop_ids

if TYPE_CHECKING:
    from serving.config import Tier

log = logging.getLogger(__name__)
_ids = itertools.count()


class ContinuousEngineConfig(EngineOptions):
    """transformers' continuous batching (the default): requests join and leave the running batch at
    every decoding step; paged KV cache. Defaults work on a small CPU box and on a GPU."""

    name: Literal["continuous"] = "continuous"
    max_requests_per_batch: int = Field(32, ge=1, le=4096, description="most requests decoding at once")
    max_batch_tokens: Optional[int] = Field(
        None,
        ge=8,
        description="most tokens (prefill + decode) in one forward; default 1024 on CPU, transformers' own on GPU",
    )
    kv_cache_tokens: Optional[int] = Field(
        None,
        ge=16,
        description="KV-cache capacity in tokens; default on CPU: min(max_requests_per_batch x "
        "context, 8192); on GPU sized from free memory (max_memory_percent)",
    )
    max_memory_percent: Optional[float] = Field(
        None, gt=0, le=1, description="GPU: share of free memory (after the weights) for the KV cache"
    )
    page_size: Optional[int] = Field(None, ge=4, description="tokens per KV-cache page; default 64 on CPU, 256 on GPU")
    prefix_caching: bool = Field(True, description="share KV blocks of identical prompt prefixes")
    attn_implementation: Optional[str] = Field(
        None,
        description="passed to from_pretrained (sdpa, paged|eager, flash_attention_2, ...); default: "
        "the model's, switched to flash attention on GPU when installed",
    )
    use_cuda_graph: Optional[bool] = Field(None, description="GPU: CUDA graphs (default: transformers decides)")
    compile_level: int = Field(0, ge=0, le=3, description="torch.compile level for the forward (0 = off)")
    solo_workers: int = Field(
        2,
        ge=1,
        le=64,
        description="requests decoded at once beside the batch (per-request sampling, seeds, penalties, "
        "logit bias, min tokens, top log-probs: each alone, its forwards taken between batch steps)",
    )


class ContinuousEngine(Engine):
    name = "continuous"
    decoding_support: ClassVar[frozenset[str]] = ENGINE_FIELDS

    def __init__(self, tier: Tier):
        from transformers import GenerationConfig  # torch and transformers load with the engine, not the module
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        from serving.engines.hf import HFModel, TextStream
        from serving.engines.hf_generate import SoloDecoder

        self._failed, self._text_stream = compat.cb_failed_status(), TextStream
        opts: ContinuousEngineConfig = tier.engine
        self.defaults = tier.generation
        self.hf = self.codec = HFModel(tier.model, attn_implementation=opts.attn_implementation)
        on_gpu = self.hf.device.type == "cuda"
        ctx = self.hf.context_length or 2048
        page = opts.page_size or (256 if on_gpu else 64)
        cb = dict(
            return_logprobs=True,
            page_size=page,
            max_requests_per_batch=opts.max_requests_per_batch,
            allow_block_sharing=opts.prefix_caching,
            default_compile_level=opts.compile_level,
            use_cuda_graph=opts.use_cuda_graph,
            max_batch_tokens=opts.max_batch_tokens,
            max_memory_percent=opts.max_memory_percent,
            auto_switch_to_flash=on_gpu,
        )
        kv_tokens = opts.kv_cache_tokens
        if kv_tokens is None and not on_gpu:  # on GPU transformers sizes the cache from free memory
            kv_tokens = min(opts.max_requests_per_batch * ctx, 8192)
        if kv_tokens is not None:
            cb["num_blocks"] = max(1, math.ceil(kv_tokens / page))
        if cb["max_batch_tokens"] is None and not on_gpu:
            cb["max_batch_tokens"] = 1024  # bounds the attention-mask buffers on CPU
        d = self.defaults
        sampling = (
            dict(do_sample=True, temperature=d.temperature, top_p=d.top_p) if d.do_sample else dict(do_sample=False)
        )
        gen_cfg = GenerationConfig(
            max_new_tokens=d.max_new_tokens,
            eos_token_id=self.hf.eos_ids,
            pad_token_id=self.hf.tokenizer.pad_token_id,
            **sampling,
        )
        self.cb_config = ContinuousBatchingConfig(**{k: v for k, v in cb.items() if v is not None})
        self.manager = self.hf.model.init_continuous_batching(
            generation_config=gen_cfg, continuous_batching_config=self.cb_config
        )
        compat.check_cb_manager(self.manager)
        self.manager.start()
        # transformers' loop thread is not a daemon: stop it when the interpreter exits, before Python
        # joins non-daemon threads (the hook concurrent.futures uses), so a forgotten engine cannot hang it.
        compat.run_before_thread_join(self.close)
        self.rate = TokenRate()
        self.finished = 0
        self._side = ThreadPoolExecutor(1, thread_name_prefix="engine-side")  # embeddings: off the event loop
        # requests with decoding controls the batch cannot take: decoded alone, a few at a time
        self._solo_pool = ThreadPoolExecutor(opts.solo_workers, thread_name_prefix="engine-solo")
        self._solo_lock = threading.Lock()
        self.solo = SoloDecoder(self.hf, self._solo_pool, guard=self._solo_forward, rate=self.rate)
        log.info(
            "continuous engine: page_size=%s num_blocks=%s max_batch_tokens=%s max_requests=%s",
            page,
            cb.get("num_blocks"),
            cb.get("max_batch_tokens"),
            opts.max_requests_per_batch,
        )

    # ---- the interface -------------------------------------------------------------------
    def count_tokens(self, req: GenerationRequest) -> int:
        return self.hf.count_tokens(req)

    @property
    def context_length(self) -> Optional[int]:
        return self.hf.context_length

    def healthy(self) -> bool:
        return self.manager.is_running()

    def in_batch(self, req: GenerationRequest) -> bool:
        """Whether the request decodes in the continuous batch (greedy, at most with its own end tokens),
        not alone beside it (:mod:`serving.engines.hf_generate`). A sampled request never does, the tier's
        default sampling (``generation.do_sample``) included: the batch reports log-probs after its
        temperature and top-p, not the model's unmodified ones."""
        return needs(req.decoding, self.defaults) <= EOS_FIELDS and sampling(req.decoding, self.defaults)[0] == 0

    async def stream(self, req: GenerationRequest) -> AsyncIterator[Chunk]:
        if not self.manager.is_running():
            raise EngineError("the continuous batching loop is not running")
        if not self.in_batch(req):
            async with aclosing(self.solo.stream(req, self.defaults)) as solo:  # closed: cancelled at the next step
                async for chunk in solo:
                    yield chunk
            return
        t0 = time.perf_counter()
        self._drop_orphans()
        prompt = self.hf.encode(req)
        stop = stop_ids(req.decoding, self.hf.eos_ids)
        rid = f"r{next(_ids)}"
        outputs: asyncio.Queue = asyncio.Queue()
        self.manager.register_result_handler(rid, outputs.put_nowait)
        fixed, fixed_lps = list(req.prefix_ids), list(req.prefix_logprobs)  # a verified draft: decode on from it
        max_new = req.max_new_tokens or self.defaults.max_new_tokens
        self.manager.add_request(
            prompt + fixed,
            request_id=rid,
            max_new_tokens=max(max_new - len(fixed), 1),
            streaming=True,
            eos_token_id=stop,
        )
        text = self._text_stream(self.hf)
        seen, done = 0, False
        try:
            while not done:
                out = await outputs.get()
                while not out.is_finished() and not outputs.empty():  # coalesce what piled up meanwhile
                    out = outputs.get_nowait()
                if out.status == self._failed:
                    done = True
                    raise EngineError(f"generation failed: {out.error}")
                ids, lps = out.generated_tokens[seen:], out.logprobs[seen:]
                self.rate.add(len(ids))
                if seen == 0:  # the first chunk also carries the fixed prefix
                    ids, lps = fixed + ids, fixed_lps + lps
                seen += len(out.generated_tokens[seen:])
                chunk = Chunk(token_ids=ids, logprobs=lps, text=text.push(ids), prompt_tokens=len(prompt))
                if out.is_finished():
                    done = True
                    chunk.final = await self._final(
                        req, prompt, fixed + out.generated_tokens, fixed_lps + out.logprobs, stop, t0
                    )
                    chunk.text += text.finish(chunk.final.text)
                    self.finished += 1
                yield chunk
        finally:
            if not done:  # the consumer went away: free the slot at the next step
                self.manager.cancel_request(rid)
                compat.forget_result_handler(self.manager, rid)  # transformers delivers nothing for a cancelled one

    def _drop_orphans(self) -> None:
        """Outputs nobody will read: the step in flight when a request was cancelled (the consumer went away, or
        the tier's rule deferred early) still delivers that request's tokens, and with its handler gone
        transformers puts them on its shared output queue, which this engine never reads (every request has a
        handler of its own). Unread, they grew the weak tier by ~1.5 MB a minute in a 30-minute soak; dropped at
        each new request, the queue holds at most the cancellations since the last one."""
        compat.drain_unrouted_outputs(self.manager)

    async def _final(self, req, prompt, ids, lps, stop, t0) -> Generation:
        ids, lps = list(ids), list(lps)
        reason = "stop" if ids and ids[-1] in stop else "length"
        gen = Generation(
            text=self.hf.decode(ids),
            token_ids=ids,
            logprobs=lps,
            prompt_tokens=len(prompt),
            finish_reason=reason,
            tokenizer=self.hf.tokenizer_id,
        )
        if req.embed:
            loop = asyncio.get_running_loop()
            gen.embedding = await loop.run_in_executor(self._side, self._paused, self.hf.embed, prompt, ids)
        gen.tier_ms = (time.perf_counter() - t0) * 1e3
        return gen

    async def score(self, req: GenerationRequest, continuation: list[int], fixed: int = 0):
        """Prefill only, on the engine's side thread, the decoding loop paused for that one forward."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._side, self._paused, self.hf.score, self.hf.encode(req), list(continuation), fixed
        )

    async def choice_logprobs(self, reqs: list[GenerationRequest], choices: list[int]):
        """One batched forward over the prompts on the side thread, the decoding loop paused for it."""
        loop = asyncio.get_running_loop()
        prompts = [self.hf.encode(r) for r in reqs]
        return await loop.run_in_executor(self._side, self._paused, self.hf.choice_logprobs, prompts, list(choices))

    async def prompt_logprobs(self, req: GenerationRequest, top_k: int = 0):
        """One forward over the prompt on the side thread, the decoding loop paused for it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._side, self._paused, self.hf.prompt_logprobs, self.hf.encode(req), top_k)

    def _pause(self):
        """The decoding loop paused at a step boundary while the caller holds this (a no-op once stopped)."""
        return self.manager.pause() if self.manager.is_running() else contextlib.nullcontext()

    @contextlib.contextmanager
    def _solo_forward(self):
        """One forward of a request decoded alone: one at a time, each in its own pause, so the batch
        loop takes a step between two of them (overlapping pauses would keep it paused)."""
        with self._solo_lock, self._pause():
            yield

    def _paused(self, fn, *args):
        """Runs a forward of our own (score, embed) on the side thread while transformers' loop is paused
        at a step boundary: its paged-attention setup makes a concurrent plain forward on the same model
        wrong (measured: 0 of 200 scores right under load). Running requests keep their state and go on."""
        with self._pause():
            return fn(*args)

    def stats(self) -> EngineStats:
        s = EngineStats(
            engine=self.name,
            tokens_per_s=self.rate.rate,
            requests=self.finished + self.solo.finished,
            generated_tokens=self.rate.total,
        )
        running, s.waiting, kv = compat.cb_load(self.manager)
        s.running = self.solo.running + running
        if kv is not None:
            s.kv_cache_usage = kv
        return s

    def info(self) -> dict:
        c = self.cb_config
        return {
            "engine": self.name,
            **self.hf.info(),
            "attn_implementation": compat.attn_implementation(self.hf.model),
            "page_size": c.page_size,
            "num_blocks": c.num_blocks,
            "max_batch_tokens": c.max_batch_tokens,
            "max_requests_per_batch": c.max_requests_per_batch,
        }

    def close(self) -> None:
        if self.manager.is_running():
            self.manager.stop(block=True, timeout=10)  # nothing is waiting by then: a prompt stop
        self._side.shutdown(wait=False)
        self._solo_pool.shutdown(wait=False)
