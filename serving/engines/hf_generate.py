"""One request decoded alone with its own controls (``serving.core.decoding.Decoding``) on a transformers
model: the transformers engines' path for what their batched path cannot do per request (continuous:
sampling, seeds, penalties, logit bias, min tokens, top log-probs; static: any non-default decoding).

A stepping loop over the model's KV cache (one sequence, no padding), transformers' own logits processors
and warpers for repetition penalty, temperature, top-k, top-p and min-p, and ours for logit bias,
min tokens and OpenAI's presence/frequency penalties. Each emitted token's log-prob (and its top-k
alternatives) is the log-softmax of the RAW logits, before any processor: the model's unmodified
distribution, the same numbers greedy decoding reports. A seed seeds the request's own
``torch.Generator``, so the draw depends on the seed and the prompt only, never on other requests.

The loop runs in a worker thread (the engine's executor); tokens reach the asyncio loop one by one;
closing the stream sets a flag the loop reads before each step, so generation stops at the next step.
``guard`` wraps every forward (continuous: the CB loop paused at a step boundary for it).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Optional

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from serving.core.decoding import Decoding
from serving.core.errors import EngineError
from serving.core.types import Chunk, Generation, GenerationRequest
from serving.engines.controls import check_vocab, sampling, stop_ids
from serving.engines.hf import HFModel, TextStream


class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the answer's tokens so far (from ``start``):
    ``logits[t] -= presence * (count_t > 0) + frequency * count_t``."""

    def __init__(self, presence: float, frequency: float, start: int):
        self.presence, self.frequency, self.start = presence, frequency, start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        answer = input_ids[:, self.start :]
        if answer.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(1, answer, torch.ones_like(answer, dtype=scores.dtype))
        return scores - self.presence * (counts > 0).to(scores.dtype) - self.frequency * counts


class LogitBias(LogitsProcessor):
    """Adds a fixed bias to chosen tokens' logits (OpenAI's ``logit_bias``)."""

    def __init__(self, bias: dict[int, float], device):
        self.ids = torch.tensor(list(bias), dtype=torch.long, device=device)
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.ids] += self.values.to(scores.dtype)
        return scores


class MinTokens(LogitsProcessor):
    """The answer's end tokens are impossible until it has ``n`` tokens (counted from ``start``)."""

    def __init__(self, n: int, stop: list[int], start: int, device):
        self.n, self.start = n, start
        self.stop = torch.tensor(stop, dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] - self.start >= self.n or self.stop.numel() == 0:
            return scores
        scores = scores.clone()
        scores[:, self.stop] = -math.inf
        return scores


def processors(d: Decoding, temperature: float, top_p: float, start: int, stop: list[int], device):
    """The request's processors, in vLLM's order: logit bias, min tokens, penalties, then (when sampling)
    temperature, top-k, top-p, min-p. ``start``: where the answer begins in the sequence."""
    out = LogitsProcessorList()
    if d.logit_bias:
        out.append(LogitBias(d.logit_bias, device))
    if d.min_tokens:
        out.append(MinTokens(d.min_tokens, stop, start, device))
    if d.repetition_penalty != 1.0:
        out.append(RepetitionPenaltyLogitsProcessor(d.repetition_penalty))  # prompt and answer, as vLLM
    if d.presence_penalty or d.frequency_penalty:
        out.append(PresenceFrequencyPenalty(d.presence_penalty, d.frequency_penalty, start))
    if temperature > 0:
        if temperature != 1.0:
            out.append(TemperatureLogitsWarper(temperature))
        if d.top_k > 0:
            out.append(TopKLogitsWarper(d.top_k))
        if top_p < 1.0:
            out.append(TopPLogitsWarper(top_p))
        if d.min_p > 0:
            out.append(MinPLogitsWarper(d.min_p))
    return out


def top_pairs(lp: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens of one log-prob row, most likely first, as (token id, log-prob)."""
    vals, idx = lp.topk(k)
    return list(zip(idx.tolist(), vals.tolist()))


@torch.inference_mode()
def decode(
    hf: HFModel,
    prompt: list[int],
    req: GenerationRequest,
    max_new: int,
    defaults,
    emit: Callable[[list[int], list[float], Optional[list]], None],
    cancel: threading.Event,
    guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[str, list[int]]:
    """Decodes one request (blocking; a worker thread). ``emit(ids, logprobs, tops)`` gets the verified
    prefix first (when there is one), then every new token as it is chosen. Returns (finish reason,
    the answer's token ids)."""
    d = req.decoding
    dev = hf.device
    fixed, fixed_lps = list(req.prefix_ids), list(req.prefix_logprobs)
    temperature, top_p = sampling(d, defaults)
    stop = stop_ids(d, hf.eos_ids)
    stop_set = set(stop)
    k = d.top_logprobs or 0
    start = len(prompt)  # the answer (prefix included) starts here
    procs = processors(d, temperature, top_p, start, stop, dev)
    gen = torch.Generator(device=dev)
    if d.seed is not None:
        gen.manual_seed(d.seed)
    else:
        gen.seed()
    seq = torch.tensor([prompt + fixed + [0] * max_new], dtype=torch.long, device=dev)
    n = start + len(fixed)
    with guard():
        out = hf.model(input_ids=seq[:, :n], use_cache=True)
    if fixed:
        tops = None
        if k:
            lp = torch.log_softmax(out.logits[0, start - 1 : n - 1].float(), -1)
            tops = [top_pairs(row, k) for row in lp]
        emit(fixed, fixed_lps, tops)
    past, logits = out.past_key_values, out.logits[:, -1].float()
    del out
    reason = "length"
    for step in range(max_new):
        if cancel.is_set():
            reason = "cancelled"
            break
        raw = torch.log_softmax(logits, -1)[0]
        scores = procs(seq[:, :n], logits) if procs else logits
        if temperature > 0:
            tok = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=gen))
        else:
            tok = int(scores.argmax(-1))
        seq[0, n] = tok
        n += 1
        emit([tok], [raw[tok].item()], [top_pairs(raw, k)] if k else None)
        if tok in stop_set:
            reason = "stop"
            break
        if step == max_new - 1:
            break
        with guard():
            out = hf.model(input_ids=seq[:, n - 1 : n], past_key_values=past, use_cache=True)
        past, logits = out.past_key_values, out.logits[:, -1].float()
        del out
    return reason, seq[0, start:n].tolist()


class SoloDecoder:
    """Streams requests through :func:`decode` on ``executor`` (the engine's worker threads); counts the
    requests decoding now (``running``) for the engine's stats."""

    def __init__(self, hf: HFModel, executor, guard=contextlib.nullcontext, rate=None):
        self.hf, self.executor, self.guard, self.rate = hf, executor, guard, rate
        self.running = 0  # streams open
        self.finished = 0
        self.decoding = 0  # worker loops running (a cancelled one ends at its next step)
        self.cancelled = 0  # loops that ended early because their stream was closed
        self._count = threading.Lock()

    async def stream(self, req: GenerationRequest, defaults, prompt=None) -> AsyncIterator[Chunk]:
        """The request decoded alone, up to its max tokens (``defaults``: the tier's generation settings)."""
        max_new = req.max_new_tokens or defaults.max_new_tokens
        hf = self.hf
        check_vocab(req.decoding, hf.model.config.vocab_size)
        t0 = time.perf_counter()
        prompt = hf.encode(req) if prompt is None else prompt
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        k = req.decoding.top_logprobs or 0
        steps = max(max_new - len(req.prefix_ids), 1)

        def put(item) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, item)
            except RuntimeError:  # the loop is gone: nobody reads this any more
                cancel.set()

        def work() -> None:
            with self._count:
                self.decoding += 1
            try:
                reason, ids = decode(
                    hf, prompt, req, steps, defaults, lambda *t: put(("tok", *t)), cancel, guard=self.guard
                )
                if reason == "cancelled":
                    with self._count:
                        self.cancelled += 1
                    return
                emb = None
                if req.embed:
                    with self.guard():
                        emb = hf.embed(prompt, ids)
                put(("end", reason, emb))
            except BaseException as e:  # noqa: BLE001  (reported on the stream)
                put(("error", e))
            finally:
                with self._count:
                    self.decoding -= 1

        self.running += 1
        loop.run_in_executor(self.executor, work)
        text = TextStream(hf)
        all_ids, all_lps, all_tops, done = [], [], [], False
        prefix_pending = bool(req.prefix_ids)
        try:
            while not done:
                items = [await q.get()]
                while not q.empty():  # coalesce what piled up meanwhile
                    items.append(q.get_nowait())
                ids, lps, tops, end = [], [], [], None
                for it in items:
                    if it[0] == "tok":
                        if prefix_pending:  # the verified prefix (not generated here)
                            prefix_pending = False
                        elif self.rate is not None:
                            self.rate.add(len(it[1]))
                        ids += it[1]
                        lps += it[2]
                        tops += it[3] or []
                    elif it[0] == "end":
                        end = it
                    else:
                        done = True
                        raise EngineError(f"generation failed: {type(it[1]).__name__}: {it[1]}") from it[1]
                all_ids += ids
                all_lps += lps
                all_tops += tops
                chunk = Chunk(
                    token_ids=ids,
                    logprobs=lps,
                    text=text.push(ids),
                    top_logprobs=tops if k else None,
                    prompt_tokens=len(prompt),
                )
                if end is not None:
                    done = True
                    chunk.final = Generation(
                        text=hf.decode(all_ids),
                        token_ids=all_ids,
                        logprobs=all_lps,
                        prompt_tokens=len(prompt),
                        finish_reason=end[1],
                        embedding=end[2],
                        tokenizer=hf.tokenizer_id,
                        top_logprobs=all_tops if k else None,
                        tier_ms=(time.perf_counter() - t0) * 1e3,
                    )
                    chunk.text += text.finish(chunk.final.text)
                    self.finished += 1
                if ids or end is not None:
                    yield chunk
        finally:
            self.running -= 1
            if not done:  # the consumer went away: the loop stops at its next step
                cancel.set()
