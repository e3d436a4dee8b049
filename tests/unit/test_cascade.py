"""The cascade walk (serving/core/walk.py) with fake tier clients: no Ray, no models. The fakes keep the
tier's protocol honestly: their scripted engine stream goes through the same ``serving.core.decide``
that the Serve tier runs, so the rule is applied, and the verdict reported, where a real tier does it."""

import asyncio
import math
from contextlib import aclosing

import pytest

from serving.config import parse_config
from serving.core.decide import decide
from serving.core.errors import BadRequest, TierFailure
from serving.core.request import CascadeRequest, Outcome, Text
from serving.core.types import Chunk, Generation, GenerationRequest
from serving.core.walk import Cascade


def config(tiers=("weak", "strong"), threshold=-0.5, **over):
    raw = {
        "tiers": [{"name": n, "model": {"source": n}} for n in tiers],
        "deferral": {"rule": "chow_quantile", "alpha": 0.0, "threshold": threshold},
    }
    raw.update(over)
    return parse_config(raw)


class FakeTiers:
    """Each tier's engine streams its scripted (text piece, log-prob) tokens, or raises its scripted error
    after ``fail_after`` tokens; the tier applies the call's rule to that stream as the Serve tier does
    (``decide``). Records calls and engine streams closed before their end."""

    def __init__(self, answers: dict, errors: dict | None = None, fail_after: int = 0):
        self.answers, self.errors, self.fail_after = answers, errors or {}, fail_after
        self.calls: list[str] = []
        self.closed_early: list[str] = []
        self.tokens: list[bool] = []
        self.stops: list = []
        self.drafts: list = []

    async def stream(self, tier, req, tokens=True, stop=None, draft=None):
        self.calls.append(tier)
        self.tokens.append(tokens)
        self.stops.append(stop)
        self.drafts.append(draft)
        async for chunk in decide(self.engine(tier), stop, tokens):
            yield chunk

    async def engine(self, tier):
        pieces = self.answers.get(tier, [])
        done = False
        try:
            for i, (text, lp) in enumerate(pieces):
                if tier in self.errors and i == self.fail_after:
                    raise self.errors[tier]
                await asyncio.sleep(0)
                yield Chunk(token_ids=[i], logprobs=[lp], text=text)
            if tier in self.errors:
                raise self.errors[tier]
            text = "".join(t for t, _ in pieces)
            done = True
            yield Chunk(
                final=Generation(
                    text=text,
                    token_ids=list(range(len(pieces))),
                    logprobs=[lp for _, lp in pieces],
                    prompt_tokens=3,
                    finish_reason="stop",
                )
            )
        finally:
            if not done:
                self.closed_early.append(tier)


SURE = [("4", -0.01), ("2", -0.02)]  # min log-prob -0.02: accepted at threshold -0.5
UNSURE = [("5", -0.01), ("3", -1.5)]  # min -1.5: deferred
STRONG = [("4", -0.1), ("3", -0.1), ("9", -0.1)]


def plan(cascade, tiers=None, threshold=None, forced=False):
    return CascadeRequest(GenerationRequest(prompt="q"), tiers or cascade.names, forced, threshold, stream=True)


def unary(cascade):
    """A Generate call: the walk collected, nobody reading tokens."""
    p = plan(cascade)
    p.stream = False
    return asyncio.run(cascade.run(p))


def walk(cascade, p):
    async def run():
        async with aclosing(cascade.walk(p)) as events:
            return [ev async for ev in events]

    return asyncio.run(run())


def test_confident_weak_answer_is_kept_and_strong_never_called():
    fake = FakeTiers({"weak": SURE, "strong": STRONG})
    c = Cascade(config(), fake)
    *texts, out = walk(c, plan(c))
    assert fake.calls == ["weak"]
    assert texts == [Text("weak", "42")]  # an earlier tier's text is sent once the rule accepts it
    assert isinstance(out, Outcome) and (out.answered_by, out.deferred, out.answer.text) == ("weak", False, "42")
    assert out.score == pytest.approx(-0.02) and out.threshold == -0.5
    assert [r.tier for r in out.runs] == ["weak"] and out.runs[0].score == pytest.approx(-0.02)


def test_unsure_weak_answer_defers_and_strong_streams_token_by_token():
    fake = FakeTiers({"weak": UNSURE, "strong": STRONG})
    c = Cascade(config(), fake)
    *texts, out = walk(c, plan(c))
    assert fake.calls == ["weak", "strong"]
    assert texts == [Text("strong", "4"), Text("strong", "3"), Text("strong", "9")]  # weak text never sent
    assert (out.answered_by, out.deferred, out.answer.text, out.score) == ("strong", True, "439", -1.5)
    assert [r.tier for r in out.runs] == ["weak", "strong"] and out.runs[1].score is None


def test_three_tiers_walk_on_until_one_is_sure():
    fake = FakeTiers({"a": UNSURE, "b": UNSURE, "c": STRONG})
    c = Cascade(config(("a", "b", "c")), fake)
    *_, out = walk(c, plan(c))
    assert fake.calls == ["a", "b", "c"] and out.answered_by == "c"
    fake = FakeTiers({"a": UNSURE, "b": SURE, "c": STRONG})
    *texts, out = walk(Cascade(config(("a", "b", "c")), fake), plan(c))
    assert fake.calls == ["a", "b"] and out.answered_by == "b" and texts == [Text("b", "42")]


def test_forced_tier_and_threshold_override():
    fake = FakeTiers({"weak": UNSURE, "strong": STRONG})
    c = Cascade(config(), fake)
    *texts, out = walk(c, plan(c, tiers=["weak"], forced=True))
    assert fake.calls == ["weak"] and out.answered_by == "weak" and not out.deferred
    assert texts == [Text("weak", "5"), Text("weak", "3")]  # a forced tier streams at once
    assert out.score == pytest.approx(-1.5)  # the weak tier's score is still reported
    *_, out = walk(c, plan(c, tiers=["strong"], forced=True))
    assert out.answered_by == "strong" and math.isnan(out.score)
    *_, out = walk(c, plan(c, threshold=-1e9))
    assert out.answered_by == "weak" and out.threshold == -1e9


def test_later_tier_failure_degrades_to_the_earlier_answer():
    fake = FakeTiers({"weak": UNSURE, "strong": STRONG}, {"strong": TierFailure("strong", "timeout", "timed out")})
    c = Cascade(config(), fake)
    *texts, out = walk(c, plan(c))
    assert texts == [Text("weak", "53")]
    assert (out.answered_by, out.deferred, out.answer.text) == ("weak", True, "53")
    assert out.degraded == "timed out; answered by 'weak'"


def test_failure_policy_fail_and_first_tier_failure_raise():
    err = TierFailure("strong", "unavailable", "no replica")
    c = Cascade(config(reliability={"on_tier_failure": "fail"}), FakeTiers({"weak": UNSURE}, {"strong": err}))
    with pytest.raises(TierFailure, match="no replica"):
        walk(c, plan(c))
    c = Cascade(config(), FakeTiers({}, {"weak": TierFailure("weak", "error", "boom")}))
    with pytest.raises(TierFailure, match="boom"):
        walk(c, plan(c))


def test_no_switch_after_bytes_were_sent():
    """The last tier fails after it streamed text: degrading would send a second answer, so it fails."""
    err = TierFailure("strong", "replica_died", "died")
    fake = FakeTiers({"weak": UNSURE, "strong": STRONG}, {"strong": err}, fail_after=2)
    c = Cascade(config(), fake)

    async def run():
        seen = []
        with pytest.raises(TierFailure):
            async with aclosing(c.walk(plan(c))) as events:
                async for ev in events:
                    seen.append(ev)
        return seen

    assert asyncio.run(run()) == [Text("strong", "4"), Text("strong", "3")]


def test_bad_request_from_a_tier_propagates():
    c = Cascade(config(), FakeTiers({}, {"weak": BadRequest("prompt is 900 tokens")}))
    with pytest.raises(BadRequest, match="900 tokens"):
        walk(c, plan(c))


def test_a_reader_that_stops_cancels_the_tier_stream():
    fake = FakeTiers({"weak": UNSURE, "strong": STRONG * 5})
    c = Cascade(config(), fake)

    async def run():
        async with aclosing(c.walk(plan(c))) as events:
            async for ev in events:
                assert isinstance(ev, Text)
                break  # the client went away after the first piece

    asyncio.run(run())
    assert fake.closed_early == ["weak", "strong"]  # weak: stopped by the early DEFER; strong: by the reader


def test_run_collects_the_walk():
    fake = FakeTiers({"weak": UNSURE, "strong": STRONG})
    out = unary(Cascade(config(), fake))
    assert (out.answered_by, out.answer.text) == ("strong", "439")
    assert fake.tokens == [False, False]  # nobody reads tokens: one message per tier call
    assert fake.stops[0].threshold == -0.5 and fake.stops[0].rule == "chow_quantile" and fake.stops[1] is None


def test_tokens_are_asked_for_only_where_someone_reads_them():
    fake = FakeTiers({"weak": UNSURE, "strong": STRONG})
    c = Cascade(config(deferral={"rule": "chow_average", "threshold": -0.5}), fake)
    walk(c, plan(c))
    assert fake.tokens == [False, True]  # average cannot decide early; the streamed last tier can be read


def test_budget_controller_sets_the_threshold_when_the_request_has_none():
    cfg = config(
        deferral={
            "rule": "chow_quantile",
            "threshold": -0.5,
            "target_deferral": 0.5,
            "controller_window": 10,
            "controller_warmup": 1,
        }
    )
    c = Cascade(cfg, FakeTiers({"weak": SURE, "strong": STRONG}))
    outs = [walk(c, plan(c, threshold=None))[-1] for _ in range(4)]
    assert all(math.isfinite(o.threshold) for o in outs) and outs[0].threshold == -0.5


class Recorder:
    def __init__(self):
        self.counts = {}

    def inc(self, name, value=1.0, **tags):
        key = (name, tuple(sorted(tags.items())))
        self.counts[key] = self.counts.get(key, 0) + value

    def observe(self, name, value, **tags):
        self.inc(name + ":n", **tags)

    def set(self, name, value, **tags):
        self.counts[(name + ":last", tuple(sorted(tags.items())))] = value


def test_metrics_per_tier():
    m = Recorder()
    c = Cascade(config(), FakeTiers({"weak": UNSURE, "strong": STRONG}), m)
    walk(c, plan(c))
    assert m.counts[("cascade_deferrals", (("tier", "weak"),))] == 1
    assert m.counts[("cascade_tier_tokens", (("kind", "completion"), ("tier", "strong")))] == 3
    assert m.counts[("cascade_tier_latency_ms:n", (("tier", "weak"),))] == 1


LONG_UNSURE = [("1", -0.01), ("2", -2.0), ("3", -0.01), ("4", -0.01), ("5", -0.01)]


def test_exact_early_deferral_stops_the_weak_tier_at_the_first_certain_token():
    fake = FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})
    c = Cascade(config(), fake)
    *texts, out = walk(c, plan(c))
    weak = out.runs[0]
    assert fake.closed_early[0] == "weak" and weak.generation.finish_reason == "deferred"
    assert (weak.decided_at, weak.decided_early, weak.generation.completion_tokens) == (2, True, 2)
    assert weak.score == -2.0 == out.score  # min of the prefix = min of the whole answer: same decision
    assert out.answered_by == "strong" and all(t.tier == "strong" for t in texts)


def test_early_deferral_off_reads_the_whole_weak_answer():
    fake = FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})
    c = Cascade(config(deferral={"rule": "chow_quantile", "threshold": -0.5, "early_deferral": False}), fake)
    *_, out = walk(c, plan(c))
    assert fake.closed_early == [] and fake.tokens == [False, True]
    assert out.runs[0].generation.completion_tokens == 5 and not out.runs[0].decided_early
    assert out.answered_by == "strong" and out.score == -2.0


def test_a_window_accepts_early_and_streams_the_weak_answer_from_there():
    answer = [("1", -0.01), ("2", -0.02), ("3", -3.0), ("4", -0.01)]  # unsure only after the window
    fake = FakeTiers({"weak": answer, "strong": STRONG})
    c = Cascade(config(deferral={"rule": "chow_quantile", "threshold": -0.5, "decide_within_tokens": 2}), fake)
    *texts, out = walk(c, plan(c))
    assert texts == [Text("weak", "12"), Text("weak", "3"), Text("weak", "4")]  # held until the verdict, then flows
    assert fake.calls == ["weak"] and out.answered_by == "weak" and out.answer.text == "1234"
    assert out.runs[0].decided_at == 2 and out.runs[0].decided_early and out.score == pytest.approx(-0.02)


def test_a_window_defers_on_its_prefix():
    answer = [("1", -0.01), ("2", -3.0), ("3", -0.01)]
    fake = FakeTiers({"weak": answer, "strong": STRONG})
    c = Cascade(config(deferral={"rule": "chow_average", "threshold": -0.5, "decide_within_tokens": 2}), fake)
    *_, out = walk(c, plan(c))
    assert out.answered_by == "strong" and out.runs[0].decided_at == 2
    assert out.score == pytest.approx(-1.505)


def test_each_boundary_has_its_own_rule():
    tiers = [
        {"name": "a", "model": {"source": "a"}, "deferral": {"rule": "chow_quantile", "threshold": -0.5}},
        {"name": "b", "model": {"source": "b"}, "deferral": {"rule": "chow_quantile", "threshold": -3.0}},
        {"name": "c", "model": {"source": "c"}},
    ]
    cfg = parse_config({"tiers": tiers, "deferral": {"rule": "chow_sum", "threshold": -100.0}})
    fake = FakeTiers({"a": UNSURE, "b": UNSURE, "c": STRONG})
    *_, out = walk(Cascade(cfg, fake), plan(Cascade(cfg, fake)))
    assert fake.calls == ["a", "b"] and out.answered_by == "b"  # b's own threshold (-3) accepts -1.5
    assert [r.decided_early for r in out.runs] == [True, False]


def test_degrading_after_an_early_deferral_runs_the_earlier_tier_to_the_end():
    fake = FakeTiers({"weak": LONG_UNSURE}, {"strong": TierFailure("strong", "timeout", "timed out")})
    c = Cascade(config(), fake)
    *texts, out = walk(c, plan(c))
    assert fake.calls == ["weak", "strong", "weak"]
    assert texts == [Text("weak", "12345")] and out.answer.text == "12345" and out.degraded


def test_a_tier_that_stops_itself_reports_the_decision_the_walk_takes():
    """Unary (tokens=False): the tier ends the weak call at the certain DEFER; its last chunk says so."""
    out = unary(Cascade(config(), FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})))
    weak = out.runs[0]
    assert (weak.generation.finish_reason, weak.decided_at, weak.decided_early, weak.score) == (
        "deferred",
        2,
        True,
        -2.0,
    )
    assert out.answered_by == "strong" and out.answer.text == "439"


def test_verify_hands_the_weak_draft_to_the_next_tier():
    fake = FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})
    c = Cascade(config(deferral={"rule": "chow_quantile", "threshold": -0.5, "on_defer": "verify"}), fake)
    walk(c, plan(c))
    weak_draft = fake.drafts[1]
    assert fake.drafts[0] is None and weak_draft.text == "12" and weak_draft.token_ids == [0, 1]  # cut at the DEFER
    fake = FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})
    walk(Cascade(config(), fake), plan(c))
    assert fake.drafts == [None, None]  # regenerate (default): no draft


def test_a_verification_band_regenerates_below_its_floor():
    d = {"rule": "chow_quantile", "threshold": -0.5, "on_defer": "verify", "verify_floor": -1.0}
    fake = FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})  # weak's score -2.0: below the floor
    walk(Cascade(config(deferral=d), fake), plan(Cascade(config(deferral=d), fake)))
    assert fake.drafts == [None, None]
    fake = FakeTiers({"weak": [("1", -0.01), ("2", -0.7)], "strong": STRONG})  # -0.7: inside the band
    walk(Cascade(config(deferral=d), fake), plan(Cascade(config(deferral=d), fake)))
    assert fake.drafts[1] is not None and fake.drafts[1].text == "12"


# ---- receipts and load-aware deferral ---------------------------------------------------------------
COSTS = {
    "weak": {"per_request": 0.5, "per_completion_token": 1.0},
    "strong": {"per_request": 5.0, "per_completion_token": 10.0},
}


def priced(**over):
    cfg = config(**over)
    for t in cfg.tiers:
        t.cost = type(t.cost)(**COSTS.get(t.name, {}))
    return cfg


def test_receipt_of_a_deferred_request_includes_the_discarded_weak_attempt():
    m = Recorder()
    c = Cascade(priced(), FakeTiers({"weak": LONG_UNSURE, "strong": STRONG}), m)
    out = unary(c)
    r = out.receipt
    # the weak tier was stopped after 2 tokens: those 2 are on the bill, flagged discarded
    assert [(x.tier, x.completion_tokens, x.discarded) for x in r.lines] == [("weak", 2, True), ("strong", 3, False)]
    assert [x.cost for x in r.lines] == [0.5 + 2, 5 + 30] and r.total == 37.5
    assert (r.strong_only, r.strong_only_estimated) == (35.0, False)
    assert m.counts[("cascade_cost", (("tier", "weak"),))] == 2.5
    assert m.counts[("cascade_cost", (("tier", "strong"),))] == 35.0
    assert m.counts[("cascade_cost_strong_only", ())] == 35.0
    out = unary(Cascade(priced(), FakeTiers({"weak": SURE, "strong": STRONG})))
    assert (out.receipt.total, out.receipt.strong_only, out.receipt.strong_only_estimated) == (2.5, 25.0, True)


def test_receipts_add_up_to_the_metrics_and_the_running_totals():
    m = Recorder()
    fake = FakeTiers({"weak": SURE, "strong": STRONG})
    c = Cascade(priced(), fake, m)
    receipts = [unary(c).receipt]
    fake.answers["weak"] = UNSURE
    receipts += [unary(c).receipt, walk(c, plan(c))[-1].receipt]
    metric = sum(v for (name, _), v in m.counts.items() if name == "cascade_cost")
    assert metric == pytest.approx(sum(r.total for r in receipts)) == pytest.approx(c.costs.total)
    assert m.counts[("cascade_cost_strong_only", ())] == pytest.approx(sum(r.strong_only for r in receipts))
    assert c.costs.requests == 3 and c.costs.by_tier["strong"] == pytest.approx(2 * 35.0)


def test_receipt_of_a_degraded_answer_lists_the_rerun():
    fake = FakeTiers({"weak": LONG_UNSURE}, {"strong": TierFailure("strong", "timeout", "timed out")})
    out = unary(Cascade(priced(), fake))
    # weak stopped early (2 tokens, discarded), strong failed (not billed), weak re-run to the end
    assert [(x.tier, x.completion_tokens, x.discarded) for x in out.receipt.lines] == [
        ("weak", 2, True),
        ("weak", 5, False),
    ]
    assert out.receipt.total == 2.5 + 5.5 and out.receipt.strong_only_estimated


class GatedTiers(FakeTiers):
    """The strong tier holds every call until ``gate`` is set (a saturated tier); ``hold[(tier, prompt)]``
    holds that tier's calls for that prompt until it is set."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.gate = asyncio.Event()
        self.hold: dict = {}

    async def stream(self, tier, req, tokens=True, stop=None, draft=None):
        if tier == "strong":
            await self.gate.wait()
        if (tier, req.prompt) in self.hold:
            await self.hold[(tier, req.prompt)].wait()
        async for chunk in super().stream(tier, req, tokens, stop, draft):
            yield chunk


def test_load_aware_deferral_keeps_answers_while_the_next_tier_is_saturated():
    m = Recorder()
    cfg = config(
        deferral={
            "rule": "chow_quantile",
            "threshold": -0.5,
            "load_aware": {"high_watermark": 1, "low_watermark": 0, "floor": -2.0, "ramp_s": 0},
        }
    )
    fake = GatedTiers({"weak": UNSURE, "strong": STRONG})
    c = Cascade(cfg, fake, m)

    async def run():
        p = plan(c)
        p.stream = False
        first = asyncio.ensure_future(c.run(p))  # defers (score -1.5 < -0.5) and waits at the strong tier
        while c.inflight["strong"] == 0:
            await asyncio.sleep(0)
        second = await c.run(p)  # strong has 1 in flight: threshold at the floor, -1.5 >= -2 is kept
        fake.gate.set()
        return await first, second, await c.run(p)  # nothing in flight: back to -0.5, defers again

    first, second, third = asyncio.run(run())
    assert (first.answered_by, first.load_shed, first.threshold) == ("strong", False, -0.5)
    assert (second.answered_by, second.load_shed, second.threshold, second.deferred) == ("weak", True, -2.0, False)
    assert (third.answered_by, third.load_shed, third.threshold) == ("strong", False, -0.5)
    assert m.counts[("cascade_load_shed", (("tier", "weak"),))] == 1
    assert m.counts[("cascade_effective_threshold:last", (("tier", "weak"),))] == -0.5
    assert c.inflight == {"weak": 0, "strong": 0}


def test_load_aware_deferral_does_not_touch_a_request_threshold_or_sure_answers():
    cfg = config(
        deferral={
            "rule": "chow_quantile",
            "threshold": -0.5,
            "load_aware": {"high_watermark": 1, "floor": -2.0, "ramp_s": 0},
        }
    )
    fake = GatedTiers({"weak": SURE, "strong": STRONG})
    c = Cascade(cfg, fake)
    c.inflight["strong"] = 5  # saturated
    out = unary(c)
    assert (out.answered_by, out.load_shed, out.threshold) == ("weak", False, -2.0)  # sure anyway: not flagged
    fake.gate.set()
    fake.answers["weak"] = UNSURE
    out = asyncio.run(c.run(plan(c, threshold=-1.0)))  # the caller's threshold is taken as given
    assert (out.answered_by, out.load_shed, out.threshold) == ("strong", False, -1.0)


LOAD_AWARE = {
    "rule": "chow_quantile",
    "threshold": -0.5,
    "load_aware": {"high_watermark": 1, "low_watermark": 0, "floor": -2.0, "ramp_s": 0},
}


def test_load_aware_deferral_decides_at_the_load_when_it_decides():
    """The strong tier saturates while the weak tier is still answering: the decision sees it."""
    fake = GatedTiers({"weak": UNSURE, "strong": STRONG})
    c = Cascade(config(deferral=LOAD_AWARE), fake)
    fake.hold[("weak", "slow")] = asyncio.Event()

    async def run():
        slow = asyncio.ensure_future(c.run(CascadeRequest(GenerationRequest(prompt="slow"), c.names, False, None)))
        while c.inflight["weak"] == 0:  # the slow request is in the weak tier; the strong tier is idle
            await asyncio.sleep(0)
        busy = asyncio.ensure_future(c.run(CascadeRequest(GenerationRequest(prompt="busy"), c.names, False, None)))
        while c.inflight["strong"] == 0:
            await asyncio.sleep(0)
        fake.hold[("weak", "slow")].set()  # the slow weak answer is complete now, with strong saturated
        done, _ = await asyncio.wait([slow], timeout=5)  # a deferred one would wait for the gate
        fake.gate.set()
        out = await slow
        return out, await busy

    slow, busy = asyncio.run(run())
    assert (slow.answered_by, slow.load_shed, slow.threshold) == ("weak", True, -2.0)
    assert (busy.answered_by, busy.load_shed) == ("strong", False)


def test_a_load_aware_tier_stops_early_only_below_the_floor():
    fake = FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})
    c = Cascade(config(deferral=LOAD_AWARE), fake)
    out = unary(c)
    # -2.0 is not below the floor: the weak tier answers to the end, and the walk defers at -0.5
    assert fake.calls == ["weak", "strong"] and out.runs[0].generation.finish_reason == "stop"
    assert (out.answered_by, out.threshold, out.load_shed) == ("strong", -0.5, False)
    fake = FakeTiers({"weak": [("1", -0.01), ("2", -3.0), ("3", -0.01)], "strong": STRONG})
    out = unary(Cascade(config(deferral=LOAD_AWARE), fake))
    assert out.runs[0].generation.finish_reason == "deferred" and out.runs[0].generation.completion_tokens == 2


def test_a_sampled_request_regenerates_instead_of_verifying_and_says_so():
    from serving.core.decoding import Decoding

    fake = FakeTiers({"weak": LONG_UNSURE, "strong": STRONG})
    c = Cascade(config(deferral={"rule": "chow_quantile", "threshold": -0.5, "on_defer": "verify"}), fake)
    p = plan(c)
    p.request.decoding = Decoding(temperature=0.8, seed=1)
    *_, out = walk(c, p)
    assert fake.drafts == [None, None] and out.answered_by == "strong"
    assert [r.verify_skipped for r in out.runs] == ["", "sampled"]
