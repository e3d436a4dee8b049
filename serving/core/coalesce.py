"""Tokens coalesced between a tier and its caller: one message per interval instead of one per decoding step.

A tier replica's stream crosses a process boundary (a Serve streaming handle): every message is an object
put, sent and read, and the Router's walk handles each one. At a few milliseconds per decoding step that
per-message cost is a large part of the path (Ray Serve LLM batches its stream for the same reason,
``stream_batching_interval_ms``). :func:`coalesced` sends the first message at once (time to first token
is unchanged) and the last one as soon as it comes (no added latency at the end); in between, what
arrives within ``interval_s`` of the previous message goes out as one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Optional

from serving.core.types import Chunk


def merge(chunks: list[Chunk]) -> Chunk:
    """Consecutive chunks of one stream as one: their tokens, log-probs, texts and alternatives in order;
    the last one's ``final`` and ``decision``."""
    if len(chunks) == 1:
        return chunks[0]
    last = chunks[-1]
    texts = [c.token_texts for c in chunks]
    tops = [c.top_logprobs for c in chunks]
    return Chunk(
        token_ids=[t for c in chunks for t in c.token_ids],
        logprobs=[lp for c in chunks for lp in c.logprobs],
        text="".join(c.text for c in chunks),
        top_logprobs=None if all(t is None for t in tops) else [s for t in tops for s in t or ()],
        token_texts=None if all(t is None for t in texts) else [s for t in texts for s in t or ()],
        final=last.final,
        prompt_tokens=max(c.prompt_tokens for c in chunks),
        decision=last.decision,
    )


async def coalesced(chunks: AsyncIterator[Chunk], interval_s: float) -> AsyncIterator[Chunk]:
    """``chunks`` re-cut: the first at once, then at most one message per ``interval_s`` holding every chunk
    that came meanwhile, the last (``final``) at once. ``interval_s`` <= 0: unchanged. Closing this
    generator (the caller went away) closes ``chunks``; an error of ``chunks`` is raised after what came
    before it is sent."""
    if interval_s <= 0:
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            await chunks.aclose()
        return
    pending: list[Chunk] = []
    arrived = asyncio.Event()
    ended: list[Optional[BaseException]] = []  # [None] at the end of the stream, [error] if it failed

    async def pump() -> None:
        try:
            async for chunk in chunks:
                pending.append(chunk)
                arrived.set()
            ended.append(None)
        except Exception as e:
            ended.append(e)
        finally:
            arrived.set()

    task = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    try:
        due = loop.time()  # the first message goes out as soon as it comes
        while True:
            await arrived.wait()
            arrived.clear()
            if not ended and not (pending and pending[-1].final is not None):
                wait = due - loop.time()
                if wait > 0:
                    try:  # a last chunk (or the end) cuts the wait short
                        await asyncio.wait_for(_until_final(arrived, pending, ended), wait)
                    except asyncio.TimeoutError:
                        pass
            if pending:
                batch, pending[:] = list(pending), []
                yield merge(batch)
                due = loop.time() + interval_s
            if ended and not pending:
                if ended[0] is not None:
                    raise ended[0]
                return
    finally:
        if not task.done():
            task.cancel()
        try:
            await task
        except BaseException:
            pass
        await chunks.aclose()


async def _until_final(arrived: asyncio.Event, pending: list[Chunk], ended: list) -> None:
    while not ended and not (pending and pending[-1].final is not None):
        await arrived.wait()
        arrived.clear()
