"""Tokens coalesced between a tier and the router (serving/core/coalesce.py): the first and the last message
at once, in between one message per interval holding everything that came; nothing lost, reordered or
duplicated; errors and a caller that goes away handled."""

import asyncio
import time
from contextlib import aclosing

import pytest

from serving.core.coalesce import coalesced, merge
from serving.core.types import Chunk, Generation


def token(i: int) -> Chunk:
    return Chunk(token_ids=[i], logprobs=[-0.1 * i], text=f"t{i} ", prompt_tokens=3)


def last(n: int) -> Chunk:
    gen = Generation(text="", token_ids=list(range(n)), logprobs=[0.0] * n, prompt_tokens=3, finish_reason="stop")
    return Chunk(final=gen, prompt_tokens=3)


async def engine(n: int, step_s: float, fail: bool = False, log: list | None = None):
    try:
        for i in range(n):
            await asyncio.sleep(step_s)
            yield token(i)
        if fail:
            raise RuntimeError("engine failed")
        yield last(n)
    finally:
        if log is not None:
            log.append("closed")


async def timed(gen):
    t0, out = time.perf_counter(), []
    async with aclosing(gen) as g:
        async for c in g:
            out.append((time.perf_counter() - t0, c))
    return out


def test_merge_keeps_every_token_in_order_and_the_last_ones_final():
    a = Chunk(token_ids=[1, 2], logprobs=[-1, -2], text="ab", token_texts=["a", "b"], top_logprobs=[[(1, -1)], []])
    b = Chunk(token_ids=[3], logprobs=[-3], text="c", token_texts=["c"], top_logprobs=[[(3, -3)]], prompt_tokens=4)
    c = last(3)
    m = merge([a, b, c])
    assert (m.token_ids, m.logprobs, m.text, m.token_texts) == ([1, 2, 3], [-1, -2, -3], "abc", ["a", "b", "c"])
    assert m.top_logprobs == [[(1, -1)], [], [(3, -3)]] and m.final is c.final and m.prompt_tokens == 4
    assert merge([a]) is a and merge([Chunk(token_ids=[1]), Chunk(token_ids=[2])]).top_logprobs is None


def test_one_message_per_interval_the_first_and_last_at_once():
    out = asyncio.run(timed(coalesced(engine(40, 0.002), 0.03)))
    chunks = [c for _, c in out]
    assert [t for c in chunks for t in c.token_ids] == list(range(40))  # nothing lost, reordered or doubled
    assert "".join(c.text for c in chunks) == "".join(f"t{i} " for i in range(40))
    assert chunks[-1].final is not None and all(c.final is None for c in chunks[:-1])
    assert chunks[0].token_ids == [0]  # the first token is not held back
    assert len(chunks) <= 40 * 0.002 / 0.03 + 4  # ~one message per interval, not one per step
    gaps = [b - a for (a, _), (b, _) in zip(out[1:-1], out[2:-1])]
    assert all(g >= 0.025 for g in gaps), gaps


def test_the_last_chunk_is_not_held_for_the_interval():
    async def two():
        yield token(0)
        await asyncio.sleep(0.01)
        yield last(1)

    out = asyncio.run(timed(coalesced(two(), 1.0)))
    assert len(out) == 2 and out[-1][1].final is not None and out[-1][0] < 0.5


def test_zero_interval_passes_every_chunk_through():
    out = asyncio.run(timed(coalesced(engine(5, 0.0), 0.0)))
    assert [c.token_ids for _, c in out] == [[0], [1], [2], [3], [4], []]


def test_an_engine_error_comes_after_the_tokens_before_it():
    got = []

    async def read():
        async with aclosing(coalesced(engine(5, 0.001, fail=True), 0.05)) as g:
            async for c in g:
                got.extend(c.token_ids)

    with pytest.raises(RuntimeError, match="engine failed"):
        asyncio.run(read())
    assert got == [0, 1, 2, 3, 4]


def test_a_caller_that_goes_away_closes_the_engine_stream():
    log = []

    async def read_two():
        async with aclosing(coalesced(engine(1000, 0.001, log=log), 0.005)) as g:
            n = 0
            async for _ in g:
                n += 1
                if n == 2:
                    break
        return log[:]

    assert asyncio.run(read_two()) == ["closed"]

    async def cancelled():
        task = asyncio.ensure_future(timed(coalesced(engine(1000, 0.001, log=log), 0.005)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return log[:]

    assert asyncio.run(cancelled()) == ["closed", "closed"]
