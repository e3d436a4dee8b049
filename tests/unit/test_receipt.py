"""Receipts (serving/core/receipt.py): pricing, discarded calls, the strong-only counterfactual, totals."""

import pytest

from serving.config import parse_config
from serving.core.receipt import CostTotals, make_receipt, price
from serving.core.types import Generation


def config(costs):
    return parse_config(
        {
            "tiers": [{"name": n, "model": {"source": n}, **({"cost": c} if c else {})} for n, c in costs.items()],
            "deferral": {"rule": "chow_quantile", "threshold": -0.5},
        }
    )


def gen(prompt, completion, reason="stop"):
    return Generation(
        text="x" * completion,
        token_ids=list(range(completion)),
        logprobs=[-0.1] * completion,
        prompt_tokens=prompt,
        finish_reason=reason,
    )


CFG = config(
    {
        "weak": {"per_prompt_token": 0.001, "per_completion_token": 0.002, "per_request": 0.01},
        "strong": {"per_prompt_token": 0.01, "per_completion_token": 0.03, "per_request": 0.1},
    }
)


def test_price_is_per_request_plus_per_token():
    assert price(CFG.tier("strong").cost, 20, 5) == pytest.approx(0.1 + 0.2 + 0.15)


def test_weak_answer_prices_one_line_and_estimates_strong_only_from_it():
    w = gen(20, 6)
    r = make_receipt(CFG, [("weak", w)], w)
    assert [(x.tier, x.prompt_tokens, x.completion_tokens, x.discarded) for x in r.lines] == [("weak", 20, 6, False)]
    assert r.total == pytest.approx(0.01 + 0.02 + 0.012) == pytest.approx(r.lines[0].cost)
    # the strong tier did not run: an estimate with the weak answer's counts, priced at strong's rates
    assert (r.strong_tier, r.strong_only_estimated) == ("strong", True)
    assert (r.strong_only_prompt_tokens, r.strong_only_completion_tokens) == (20, 6)
    assert r.strong_only == pytest.approx(0.1 + 0.2 + 0.18)


def test_deferred_request_includes_the_discarded_weak_attempt_and_strong_only_is_real():
    w, s = gen(20, 3, "deferred"), gen(20, 9)
    r = make_receipt(CFG, [("weak", w), ("strong", s)], s)
    assert [(x.tier, x.discarded) for x in r.lines] == [("weak", True), ("strong", False)]
    assert r.total == pytest.approx(sum(x.cost for x in r.lines))
    assert r.by_tier == {"weak": pytest.approx(r.lines[0].cost), "strong": pytest.approx(r.lines[1].cost)}
    assert not r.strong_only_estimated and r.strong_only == pytest.approx(r.lines[1].cost)
    assert r.total > r.strong_only  # a deferral costs more than asking strong alone


def test_degraded_rerun_lists_both_calls_of_the_earlier_tier():
    partial, full = gen(20, 2, "deferred"), gen(20, 7)
    r = make_receipt(CFG, [("weak", partial), ("weak", full)], full)
    assert [(x.tier, x.completion_tokens, x.discarded) for x in r.lines] == [("weak", 2, True), ("weak", 7, False)]
    assert r.strong_only_estimated and r.strong_only_completion_tokens == 7


def test_three_tiers_and_unpriced_tiers():
    cfg = config({"a": None, "b": {"per_request": 1.0}, "c": {"per_completion_token": 2.0}})
    a, b = gen(5, 4, "deferred"), gen(5, 3)
    r = make_receipt(cfg, [("a", a), ("b", b)], b)
    assert [x.cost for x in r.lines] == [0.0, 1.0] and r.total == 1.0
    assert (r.strong_tier, r.strong_only, r.strong_only_estimated) == ("c", 6.0, True)


def test_totals_add_receipts():
    w, s = gen(20, 3, "deferred"), gen(20, 9)
    t = CostTotals()
    for r in [make_receipt(CFG, [("weak", w)], w), make_receipt(CFG, [("weak", w), ("strong", s)], s)]:
        t.add(r)
    d = t.as_dict()
    assert d["requests"] == 2
    assert d["total"] == pytest.approx(d["by_tier"]["weak"] + d["by_tier"]["strong"])
    assert d["saved"] == pytest.approx(d["strong_only"] - d["total"])
