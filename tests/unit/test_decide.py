"""The tier-side decision (serving/core/decide.py), on a scripted engine stream: what leaves the tier
before the verdict, when the engine's request is closed, what the last chunk reports."""

import asyncio

from serving.core.decide import decide
from serving.core.types import Chunk, Generation
from serving.deferral.incremental import StopRule


class Engine:
    """A scripted engine stream: one chunk per token, then a last chunk with the answer."""

    def __init__(self, pieces):
        self.pieces, self.closed_early = pieces, False

    async def stream(self):
        done = False
        try:
            for i, (text, lp) in enumerate(self.pieces):
                yield Chunk(token_ids=[i], logprobs=[lp], text=text, prompt_tokens=3)
            done = True
            yield Chunk(
                final=Generation(
                    "".join(t for t, _ in self.pieces),
                    list(range(len(self.pieces))),
                    [lp for _, lp in self.pieces],
                    3,
                    "stop",
                ),
                prompt_tokens=3,
            )
        finally:
            self.closed_early = not done


def run(pieces, stop, tokens=True):
    engine = Engine(pieces)

    async def go():
        return [c async for c in decide(engine.stream(), stop, tokens)]

    return asyncio.run(go()), engine


def rule(threshold=-0.5, **kw):
    return StopRule("chow_quantile", 0.0, threshold, **kw)


UNSURE = [("1", -0.01), ("2", -2.0), ("3", -0.01)]
SURE = [("1", -0.01), ("2", -0.02), ("3", -0.03)]


def test_a_certain_defer_closes_the_engine_stream_and_sends_nothing_before():
    chunks, engine = run(UNSURE, rule())
    assert engine.closed_early and len(chunks) == 1
    last = chunks[0]
    assert last.final.finish_reason == "deferred" and last.final.token_ids == [0, 1]
    d = last.decision
    assert (d.verdict, d.score, d.decided_at, d.decided_early) == ("defer", -2.0, 2, True)


def test_held_until_the_end_when_the_rule_cannot_accept_early():
    chunks, engine = run(SURE, rule())
    assert not engine.closed_early and len(chunks) == 1  # a monotone rule never accepts before the end
    last = chunks[0]
    assert last.text == "123" and last.token_ids == [0, 1, 2]  # the held tokens come with the verdict
    assert (last.decision.verdict, last.decision.decided_early) == ("accept", False)


def test_a_window_accepts_early_and_the_rest_flows():
    chunks, _ = run(SURE, rule(window=2))
    assert [c.text for c in chunks] == ["12", "3", ""] and chunks[-1].decision.decided_at == 2


def test_unary_calls_get_one_message():
    chunks, _ = run(SURE, rule(window=2), tokens=False)
    assert len(chunks) == 1 and chunks[0].token_ids == [] and chunks[0].final.text == "123"


def test_score_only_flows_at_once_and_still_reports_the_score():
    chunks, engine = run(UNSURE, rule(score_only=True))
    assert [c.text for c in chunks] == ["1", "2", "3", ""] and not engine.closed_early
    assert chunks[-1].decision.score == -2.0


def test_load_aware_floor_stops_only_below_it_and_never_accepts_early():
    chunks, engine = run(UNSURE, rule(floor=-3.0, window=2))
    assert not engine.closed_early and len(chunks) == 1  # -2.0 is above the floor: decided at the end
    assert chunks[-1].decision.score == -2.0 and chunks[-1].decision.verdict == "defer"
    chunks, engine = run([("1", -4.0), ("2", -0.01)], rule(floor=-3.0))
    assert engine.closed_early and chunks[0].final.finish_reason == "deferred"


def test_no_rule_streams_every_token():
    chunks, _ = run(SURE, None)
    assert [c.text for c in chunks] == ["1", "2", "3", ""] and chunks[-1].decision is None
