"""Stop sequences (serving/core/stops.py): the answer ends before the stop string, a streamed answer
never shows text that turns out to start one, and the engine stream is closed at the stop."""

import asyncio

from serving.core.stops import StopText, stop_at
from serving.core.types import Chunk, Generation


def feed(stops, pieces):
    s = StopText(stops)
    out = []
    for p in pieces:
        text, stopped = s.push(p)
        out.append(text)
        if stopped:
            return out, True
    out.append(s.flush())
    return out, False


def test_text_ends_before_the_stop_string():
    assert feed(["\n"], ["4", "2", "\n", "x"]) == (["4", "2", ""], True)
    assert feed(["END"], ["ab", "cEN", "Dxyz"]) == (["ab", "c", ""], True)


def test_a_partial_match_is_held_until_it_is_decided():
    out, stopped = feed(["STOP"], ["go ", "ST", "O", "P!"])
    assert out == ["go ", "", "", ""] and stopped  # "ST", "STO" held; then the stop: nothing of it shown
    out, stopped = feed(["STOP"], ["go ", "ST", "ORM"])
    assert out == ["go ", "", "STORM", ""] and not stopped  # not a stop after all: released as a whole


def test_the_earliest_of_several_stops_wins_and_held_text_flushes_at_the_end():
    assert feed(["bb", "a"], ["xxbba"]) == (["xx"], True)
    assert feed(["ab"], ["x", "a"]) == (["x", "", "a"], False)


def test_stop_at_closes_the_engine_stream_and_keeps_the_generated_tokens():
    closed = []

    async def engine():
        try:
            for i, t in enumerate(["4", "2", "\n", "9"]):
                yield Chunk(token_ids=[i], logprobs=[-0.1], text=t, prompt_tokens=3)
            yield Chunk(final=Generation("42\n9", [0, 1, 2, 3], [-0.1] * 4, 3, "stop"))
        finally:
            closed.append(True)

    async def run():
        return [c async for c in stop_at(engine(), ["\n"])]

    chunks = asyncio.run(run())
    assert [c.text for c in chunks] == ["4", "2", ""] and closed == [True]
    gen = chunks[-1].final
    assert (gen.text, gen.token_ids, gen.finish_reason, gen.prompt_tokens) == ("42", [0, 1, 2], "stop", 3)
