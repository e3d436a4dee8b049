"""A judged boundary in the walk (serving/core/walk.py, attempt.py) with fake tier and judge clients: the
window gates the judge, early DEFER below it still stops the weak tier, nothing decides early inside it, a
failing judge leaves the rule's verdict standing (flagged, counted), and the receipt prices the judge."""

import math

import pytest

from serving.config import ConfigError, parse_config
from serving.core.errors import BadRequest, TierFailure
from serving.core.walk import Cascade
from tests.unit.test_cascade import STRONG, FakeTiers, Recorder, plan, unary, walk

SURE = [("4", -0.01), ("2", -0.02)]  # min -0.02: above the window, the rule accepts
NEAR = [("5", -0.01), ("3", -0.8), ("1", -0.01), ("0", -0.01)]  # min -0.8: below the threshold, in the window
FAR = [("1", -0.01), ("2", -2.0), ("3", -0.01), ("4", -0.01)]  # min -2.0: below the window
REFS = [
    {"question": "What is 1 + 1?", "answer": "2", "correct": True},
    {"question": "What is 2 + 2?", "answer": "5", "correct": False},
    {"question": "What is 3 + 3?", "answer": "6", "correct": True},
]


def config(method="pointwise", threshold=-0.5, bounds=(-1.0, -0.2), judge_threshold=0.5, **judge):
    j = {"model": {"source": "judge-model"}, "method": method, "timeout_s": 2.0, **judge}
    art = {
        "rule": "chow_quantile",
        "threshold": threshold,
        "judge": {"method": method, "references": REFS, "threshold": judge_threshold, "bounds": list(bounds)},
    }
    return parse_config(
        {
            "tiers": [
                {"name": "weak", "model": {"source": "weak"}, "cost": {"per_request": 1.0}},
                {"name": "strong", "model": {"source": "strong"}, "cost": {"per_request": 10.0}},
            ],
            "deferral": {"artifact": art, "judge": {**j, "cost": {"per_prompt_token": 0.01}}},
        }
    )


class Judged(FakeTiers):
    """Tiers plus a judge deployment: ``verdict`` is the log-prob pair of every comparison (first verdict
    token, second), or an exception the judge call raises."""

    def __init__(self, answers, verdict, **kw):
        super().__init__(answers, **kw)
        self.verdict = verdict
        self.judge_calls = []

    async def call(self, name, method, *args, timeout=None):
        prompts, verdicts = args
        self.judge_calls.append((name, method, prompts, verdicts, timeout))
        if isinstance(self.verdict, Exception):
            raise self.verdict
        return {"logprobs": [list(self.verdict)] * len(prompts), "prompt_tokens": 20 * len(prompts)}


YES = (math.log(0.9), math.log(0.1))  # P(first verdict) = 0.9: "Yes" / "1"
NO = (math.log(0.1), math.log(0.9))


def test_inside_the_window_the_judge_decides_and_is_on_the_receipt():
    m = Recorder()
    fake = Judged({"weak": NEAR, "strong": STRONG}, YES)
    c = Cascade(config(), fake, m)
    out = unary(c)
    assert out.answered_by == "weak" and not out.deferred  # the rule alone would have deferred (-0.8 < -0.5)
    j = out.runs[0].judge
    assert j.decided and j.score == pytest.approx(0.9) and j.threshold == 0.5 and j.comparisons == 1
    [(name, method, prompts, verdicts, timeout)] = fake.judge_calls
    assert (name, method, verdicts, timeout) == ("judge", "judge", ["Yes", "No"], 2.0)
    assert "Question: q\nAnswer: 5310" in prompts[0][-1]["content"]
    assert fake.calls == ["weak"] and out.runs[0].generation.completion_tokens == 4  # it finished, then was judged
    lines = [(x.tier, x.prompt_tokens, x.cost, x.discarded, x.judge) for x in out.receipt.lines]
    assert lines == [("weak", 3, 1.0, False, False), ("judge", 20, pytest.approx(0.2), False, True)]
    assert m.counts[("cascade_judge_calls", (("boundary", "weak"),))] == 1
    assert m.counts[("cascade_judge_latency_ms:n", (("boundary", "weak"),))] == 1
    assert m.counts[("cascade_judged_share:last", (("boundary", "weak"),))] == 1.0
    assert m.counts[("cascade_cost", (("tier", "judge"),))] == pytest.approx(0.2)


def test_a_judge_that_says_no_defers():
    c = Cascade(config(), Judged({"weak": NEAR, "strong": STRONG}, NO))
    out = unary(c)
    assert out.deferred and out.answered_by == "strong" and out.runs[0].judge.score == pytest.approx(0.1)


def test_the_incremental_rule_does_not_defer_early_inside_the_window():
    """-0.8 at the second token is a certain DEFER at the threshold (-0.5) but not below the window (-1.0):
    the weak answer runs to its end, then the judge decides; nothing of it went out before."""
    fake = Judged({"weak": NEAR, "strong": STRONG}, YES)
    c = Cascade(config(), fake)
    *texts, out = walk(c, plan(c))
    assert fake.closed_early == [] and out.runs[0].generation.finish_reason == "stop"
    assert fake.stops[0].floor == -1.0 and fake.stops[0].early_threshold == -1.0
    assert [t.text for t in texts] == ["5310"] and out.runs[0].judge.decided


def test_outside_the_window_the_rule_decides_alone():
    fake = Judged({"weak": SURE, "strong": STRONG}, NO)
    m = Recorder()
    out = unary(Cascade(config(), fake, m))
    assert out.answered_by == "weak" and out.runs[0].judge is None and fake.judge_calls == []
    assert m.counts[("cascade_judged_share:last", (("boundary", "weak"),))] == 0.0
    # below the window: the certain DEFER still stops the weak tier early, no judge
    fake = Judged({"weak": FAR, "strong": STRONG}, YES)
    out = unary(Cascade(config(), fake))
    assert out.deferred and fake.closed_early == ["weak"] and out.runs[0].generation.finish_reason == "deferred"
    assert out.runs[0].judge is None and fake.judge_calls == []


@pytest.mark.parametrize(
    "error,reason",
    [
        (TierFailure("judge", "timeout", "judge timed out"), "timeout"),
        (TierFailure("judge", "unavailable", "no replica"), "unavailable"),
        (TierFailure("judge", "overloaded", "queue full"), "overloaded"),
        (BadRequest("too long", "judge"), "refused"),
    ],
)
def test_a_failing_judge_falls_back_to_the_rule_flagged_and_counted(error, reason):
    m = Recorder()
    c = Cascade(config(), Judged({"weak": NEAR, "strong": STRONG}, error), m)
    out = unary(c)
    assert out.deferred and out.answered_by == "strong"  # the rule's verdict at -0.8 < -0.5
    j = out.runs[0].judge
    assert not j.decided and j.fallback == reason and math.isnan(j.score)
    assert m.counts[("cascade_judge_fallbacks", (("boundary", "weak"), ("reason", reason)))] == 1
    assert [x.tier for x in out.receipt.lines] == ["weak", "strong"]  # a failed call produced nothing to price
    # the rule's accept stands as well: a score in the window but above the threshold
    out = unary(Cascade(config(threshold=-0.9), Judged({"weak": NEAR, "strong": STRONG}, error)))
    assert out.answered_by == "weak" and out.runs[0].judge.fallback == reason


def test_meta_ranking_compares_with_every_reference_and_votes():
    fake = Judged({"weak": NEAR, "strong": STRONG}, YES)  # "1" at 0.9 every time
    c = Cascade(config(method="meta_ranking", judge_threshold=0.0, references=3), fake)
    out = unary(c)
    [(_, _, prompts, verdicts, _)] = fake.judge_calls
    assert verdicts == ["1", "2"] and len(prompts) == 3
    assert "Answer 2: 2" in prompts[0][-1]["content"] and "Answer 1: 5" in prompts[1][-1]["content"]
    # target first (wins 0.9) vs correct, second (0.1) vs incorrect, first (0.9) vs correct
    want = (0.9 - (1 - 0.1) + 0.9) / 3
    assert out.runs[0].judge.score == pytest.approx(want) and out.answered_by == "weak"


def test_no_judge_for_a_request_threshold_or_a_forced_tier():
    fake = Judged({"weak": NEAR, "strong": STRONG}, YES)
    c = Cascade(config(), fake)
    out = walk(c, plan(c, threshold=-0.5))[-1]
    assert out.deferred and out.runs[0].judge is None and fake.judge_calls == []
    out = walk(c, plan(c, tiers=["weak"], forced=True))[-1]
    assert out.answered_by == "weak" and fake.judge_calls == []


def test_an_open_window_judges_every_answer_and_never_stops_early():
    fake = Judged({"weak": FAR, "strong": STRONG}, YES)
    out = unary(Cascade(config(bounds=(-math.inf, math.inf)), fake))
    assert fake.closed_early == [] and out.answered_by == "weak" and out.runs[0].judge.decided


def test_budget_controller_and_judge_together():
    raw = config().model_dump(mode="json")
    raw["deferral"]["target_deferral"] = 0.5
    c = Cascade(parse_config(raw), Judged({"weak": NEAR, "strong": STRONG}, YES))
    for _ in range(3):
        assert unary(c).answered_by == "weak"
    assert len(c.boundaries[0].controller.scores) == 3  # the token scores still feed the controller


# ---- config refusals --------------------------------------------------------------------------------
def _raw(**judge):
    return {
        "tiers": [{"name": "weak", "model": {"source": "weak"}}, {"name": "strong", "model": {"source": "strong"}}],
        "deferral": {"rule": "chow_sum", "threshold": -1.0, "judge": {"model": {"source": "j"}, **judge}},
    }


def test_a_meta_ranking_judge_without_references_is_refused():
    with pytest.raises(ConfigError, match=r"deferral: .*judge\.references: .*no judge references.*cascade calibrate"):
        parse_config(_raw(threshold=0.0))


def test_a_window_outside_0_to_half_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"deferral\.judge\.window: .*\[0, 0\.5\]"):
        parse_config(_raw(method="pointwise", threshold=0.5, window=0.7))
    with pytest.raises(ConfigError, match=r"judge\.window: .*quantiles"):
        parse_config(_raw(method="pointwise", threshold=0.5, window=0.1))  # no artifact to take them from


def test_a_pointwise_judge_without_a_chat_template_is_refused(tmp_path):
    from tests.conftest import build_tiny_llama

    with pytest.raises(ConfigError, match=r"judge\.model: .*no chat template"):
        parse_config(_raw(method="pointwise", threshold=0.5, model={"source": "j", "chat_template": "never"}))
    plain = build_tiny_llama(tmp_path / "plain", chat_template=False)
    with pytest.raises(ConfigError, match=r"judge\.model: .*no chat template"):
        parse_config(_raw(method="pointwise", threshold=0.5, model={"source": str(plain)}))
    chat = build_tiny_llama(tmp_path / "chat")
    assert parse_config(_raw(method="pointwise", threshold=0.5, model={"source": str(chat)})).deferral.judge


def test_a_judge_naming_an_unknown_tier_or_no_threshold_is_refused():
    with pytest.raises(ConfigError, match=r"deferral\.judge .*model 'medium' is not a tier"):
        parse_config(_raw(method="pointwise", threshold=0.5, model="medium"))
    with pytest.raises(ConfigError, match=r"judge\.threshold: not set"):
        parse_config(_raw(method="pointwise"))
    cfg = parse_config(_raw(method="pointwise", threshold=0.5, model="strong"))
    assert cfg.judge_tiers() == {} and Cascade(cfg, None).boundaries[0].judge.name == "strong"
