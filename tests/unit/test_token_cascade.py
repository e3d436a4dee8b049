"""The token-level cascade in the walk (serving/core/speculative.py) with fake tiers: no Ray, no models. The
fake tiers are two tiny position-indexed language models; the strong tier's pass is the production
``verify_block`` over a fake scoring engine, and the weak tier's stream goes through ``decide`` as the Serve
tier does."""

import asyncio
import math
from contextlib import aclosing

import pytest

from serving.config import ConfigError, parse_config
from serving.core.decide import decide
from serving.core.decoding import Decoding
from serving.core.errors import BadRequest
from serving.core.request import CascadeRequest, Outcome, Text
from serving.core.types import Chunk, Generation, GenerationRequest
from serving.core.walk import Cascade
from serving.engines.base import verify_block
from serving.observability.metrics import METRIC_SPECS

EOS = 0
STRONG = [3, 1, 4, 1, 5, 9, 2, 6, EOS]  # the strong model's greedy answer, p = 0.6 each
WEAK = [3, 1, 4, 2, 5, 9, 2, 6, EOS]  # the weak model's: differs at position 3, where it is unsure
WEAK_Q = [0.9, 0.9, 0.9, 0.5, 0.9, 0.9, 0.9, 0.9, 0.9]
P_TOP = 0.6
P_OTHER = 0.4 / 9  # the strong model spreads the rest over the other nine tokens


def decode(ids):
    return "".join(str(t) for t in ids if t != EOS)


class StrongEngine:
    """Scores like an engine: the strong model's probability of each given token, its greedy token at
    every position and one more."""

    tokenizer_id = "tok"
    eos_ids = [EOS]

    async def score(self, req, ids, fixed=0):
        given = [math.log(P_TOP if t == STRONG[i] else P_OTHER) for i, t in enumerate(ids)]
        n = len(ids) + 1
        return given[fixed:], STRONG[fixed:n], [math.log(P_TOP)] * (n - fixed)

    def decode(self, ids):
        return decode(ids)

    def count_tokens(self, req):
        return 7


class Tiers:
    """The tier client: ``weak`` and ``strong`` stream their greedy answers from ``prefix_ids`` (up to
    ``max_new_tokens``), the rule applied by ``decide``; ``strong``'s ``verify_block`` is the production
    function over :class:`StrongEngine`. Records every call."""

    def __init__(self, strong_tokenizer="tok"):
        self.calls: list[tuple] = []
        self.engine = StrongEngine()
        self.engine.tokenizer_id = strong_tokenizer

    async def stream(self, tier, req, tokens=True, stop=None, draft=None):
        self.calls.append((tier, "stream", list(req.prefix_ids), req.max_new_tokens))
        async for chunk in decide(self.model(tier, req), stop, tokens):
            yield chunk

    async def model(self, tier, req):
        answer, probs = (WEAK, WEAK_Q) if tier == "weak" else (STRONG, [P_TOP] * len(STRONG))
        ids, lps = list(req.prefix_ids), list(req.prefix_logprobs)
        limit = req.max_new_tokens or 16
        while len(ids) < limit and (not ids or ids[-1] != EOS):
            i = len(ids)
            await asyncio.sleep(0)
            ids.append(answer[i])
            lps.append(math.log(probs[i]))
            yield Chunk(token_ids=[ids[-1]], logprobs=[lps[-1]], text=decode(ids[-1:]))
        reason = "stop" if ids[-1] == EOS else "length"
        yield Chunk(final=Generation(decode(ids), ids, lps, 7, reason, tokenizer="tok"))

    async def call(self, name, method, *args, timeout=None):
        self.calls.append((name, method, list(args[1]), list(args[2])))
        assert name == "strong" and method == "verify_block"
        req, prefix, block, block_lps, rule, tokenizer = args
        if tokenizer != self.engine.tokenizer_id:
            return None
        return await verify_block(self.engine, req, prefix, block, block_lps, rule)


class Recorder:
    """Records what the walk records, refusing a metric the exporter does not declare (as Ray's would fail)."""

    def __init__(self):
        self.counts: dict = {}

    def inc(self, name, value=1.0, **tags):
        assert name in METRIC_SPECS and set(tags) == set(METRIC_SPECS[name].tags), (name, tags)
        key = (name, tuple(sorted(tags.items())))
        self.counts[key] = self.counts.get(key, 0) + value

    def observe(self, name, value, **tags):
        assert name in METRIC_SPECS, name

    def set(self, name, value, **tags):
        assert name in METRIC_SPECS, name


def cascade(token_rule=None, tiers=None, **deferral):
    d = {"rule": "chow_quantile", "threshold": -0.5, "on_defer": "verify", "early_deferral": False, **deferral}
    if token_rule is not None:
        d["token_rule"] = token_rule
    client = tiers or Tiers()
    raw = {"tiers": [{"name": n, "model": {"source": n}} for n in ("weak", "strong")], "deferral": d}
    return Cascade(parse_config(raw), client, Recorder()), client


def run(c, stream=True, max_new=None, token_alpha=None, decoding=None):
    req = CascadeRequest(
        GenerationRequest(prompt="q", max_new_tokens=max_new, decoding=decoding or Decoding()),
        c.names,
        False,
        None,
        stream=stream,
        token_alpha=token_alpha,
    )

    async def go():
        async with aclosing(c.walk(req)) as events:
            return [ev async for ev in events]

    *texts, out = asyncio.run(go())
    assert isinstance(out, Outcome) and all(isinstance(t, Text) for t in texts)
    return texts, out


def passes(tiers):
    return [c for c in tiers.calls if c[1] == "verify_block"]


def test_the_exact_rule_gives_the_strong_tiers_own_greedy_answer_in_blocks():
    c, tiers = cascade({"rule": "exact", "block": 2})
    texts, out = run(c)
    assert out.answer.token_ids == STRONG and out.answered_by == "strong" and out.deferred
    assert "".join(t.text for t in texts) == out.answer.text == decode(STRONG)
    # pass 1: the weak answer, kept up to position 3, where the strong 1 replaces the weak 2; then blocks of 2
    # from the corrected prefix
    first = passes(tiers)[0]
    assert first[2] == [] and first[3] == WEAK
    assert passes(tiers)[1][2] == STRONG[:4]
    drafts = [x for x in tiers.calls if x[:2] == ("weak", "stream")][1:]
    assert drafts[0][2:] == (STRONG[:4], 6)  # from the corrected prefix, 2 tokens
    assert out.answer.passes == len(passes(tiers)) and out.answer.replaced == 1
    assert out.receipt.strong_passes == out.answer.passes and out.receipt.tokens_replaced == 1
    counts = c.metrics.counts
    assert counts[("cascade_token_level", (("kind", "passes"), ("tier", "strong")))] == out.answer.passes
    assert counts[("cascade_token_level", (("kind", "replaced"), ("tier", "strong")))] == 1
    weak_lines = [x for x in out.receipt.lines if x.tier == "weak"]
    assert len(weak_lines) == 1 + len(drafts) and all(x.discarded for x in weak_lines)


def test_a_loose_token_rule_keeps_the_weak_answer_in_one_strong_pass():
    c, tiers = cascade({"rule": "token", "alpha": 0.6, "block": 4})  # p(v) >= 0.6 - 0.6: every token kept
    texts, out = run(c)
    assert out.answer.token_ids == WEAK and out.answer.finish_reason == "stop"
    assert len(passes(tiers)) == 1  # the whole weak answer, its end included, kept in one pass
    assert out.answer.replaced == 0 and out.answer.draft_accepted == len(WEAK)


def test_the_chow_rule_keeps_only_where_the_weak_model_is_sure():
    c, _ = cascade({"rule": "chow", "alpha": 0.2, "block": 3})  # keep when q >= 0.8: position 3 (q 0.5) replaced
    _, out = run(c)
    assert out.answer.token_ids == STRONG[:4] + WEAK[4:] and out.answer.replaced == 1


def test_text_flows_round_by_round_when_streamed_and_arrives_whole_when_unary():
    c, _ = cascade({"rule": "exact", "block": 1})
    texts, out = run(c)
    # the weak answer kept up to its unsure token, the strong 1 in its place; then a block of one and the strong
    # tier's bonus token each round; the last round keeps the weak end, which adds no text
    assert [t.text for t in texts] == ["3141", "59", "26"] and out.answer.text == "31415926"
    assert {t.tier for t in texts} == {"strong"}
    texts, unary = run(c, stream=False)
    assert unary.answer.text == out.answer.text


def test_max_new_tokens_bounds_the_answer_and_every_block():
    c, tiers = cascade({"rule": "token", "alpha": 0.6, "block": 4})
    _, out = run(c, max_new=5)
    assert out.answer.token_ids == WEAK[:5] and out.answer.finish_reason == "length"
    assert all(len(p[3]) + len(p[2]) <= 4 for p in passes(tiers))  # a block leaves room for the strong token


def test_a_request_the_sequence_rule_accepts_never_reaches_the_strong_tier():
    c, tiers = cascade({"rule": "exact"}, threshold=-5.0)
    _, out = run(c)
    assert out.answered_by == "weak" and not out.deferred and {x[0] for x in tiers.calls} == {"weak"}


def test_the_requests_alpha_overrides_the_configured_one_and_is_refused_without_a_token_rule():
    c, _ = cascade({"rule": "token", "alpha": 0.0, "block": 4})
    assert run(c)[1].answer.token_ids == STRONG
    assert run(c, token_alpha=0.6)[1].answer.token_ids == WEAK
    c, _ = cascade()  # lossless verification, no token rule
    with pytest.raises(BadRequest) as e:
        run(c, token_alpha=0.3)
    assert e.value.field == "token_alpha"
    c, _ = cascade({"rule": "token", "alpha": 0.0})
    with pytest.raises(BadRequest) as e:  # a request that takes the ordinary path cannot honour it
        run(c, token_alpha=0.3, decoding=Decoding(temperature=0.7))
    assert e.value.field == "token_alpha"
    with pytest.raises(BadRequest, match="token_alpha"):
        CascadeRequest.build(prompt="q", token_alpha=1.5, tier_names=["weak", "strong"], limits=c.cfg.limits)


def test_sampled_requests_and_another_vocabulary_take_the_ordinary_path():
    c, tiers = cascade({"rule": "token", "alpha": 0.6})
    _, out = run(c, decoding=Decoding(temperature=0.7, seed=1))
    assert not passes(tiers) and out.answer.token_ids == STRONG  # regenerated (sampling: verify skipped)
    c, tiers = cascade({"rule": "token", "alpha": 0.6}, tiers=Tiers(strong_tokenizer="another"))
    texts, out = run(c)
    assert len(passes(tiers)) == 1 and out.answer.token_ids == STRONG and out.answer.passes == 0
    assert "".join(t.text for t in texts) == out.answer.text


def test_a_token_rule_belongs_to_the_last_boundary_and_its_block_is_bounded():
    three = {
        "tiers": [{"name": n, "model": {"source": n}} for n in ("a", "b", "c")],
        "deferral": {"rule": "chow_quantile", "threshold": -0.5, "on_defer": "verify", "token_rule": {"rule": "exact"}},
    }
    with pytest.raises(ConfigError, match="must be the last tier"):
        parse_config(three)
    three["deferral"].pop("token_rule")
    three["tiers"][1]["deferral"] = {
        "rule": "chow_quantile",
        "threshold": -0.5,
        "on_defer": "verify",
        "token_rule": {"rule": "diff", "alpha": 0.1, "block": 4},
    }
    assert parse_config(three).boundary(1).token_rule.block == 4
    for block in (0, 65):
        three["tiers"][1]["deferral"]["token_rule"]["block"] = block
        with pytest.raises(ConfigError, match="block"):
            parse_config(three)
