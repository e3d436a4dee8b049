"""The judge's pure math (serving/deferral/judges.py): prompts, preferences, Meta Ranking's vote, windows."""

from __future__ import annotations

import math

import pytest

from serving.deferral import judges
from serving.deferral.judges import Reference, Window

REFS = [
    Reference("q0", "a0", True),
    Reference("q1", "a1", True),
    Reference("q2", "a2", False),
    Reference("q3", "a3", False),
    Reference("q4", "a4", True),
]


def test_meta_ranking_vote_by_hand():
    # wins over correct references vote for (0.9 + 0.2 + 0.1), losses to incorrect ones against (0.4 + 0.3)
    wins = [0.9, 0.2, 0.6, 0.7, 0.1]
    assert judges.meta_ranking_score(wins, [r.correct for r in REFS]) == pytest.approx((1.2 - 0.7) / 5)
    assert judges.meta_ranking_score([1.0] * 3, [True] * 3) == 1.0
    assert judges.meta_ranking_score([0.0] * 2, [False] * 2) == -1.0
    with pytest.raises(ValueError):
        judges.meta_ranking_score([0.5], [True, False])


def test_preference_renormalises_the_two_verdicts():
    lps = [math.log(0.6), math.log(0.2)]
    assert judges.preference(lps, 0) == pytest.approx(0.75)
    assert judges.preference(lps, 1) == pytest.approx(0.25)
    assert judges.preference([math.nan, -1.0], 0) == 0.5
    assert judges.preference([-math.inf, -math.inf], 1) == 0.5
    assert judges.preference([0.0, -800.0], 0) == pytest.approx(1.0)  # no overflow


def test_alternating_slots_and_the_aggregate_by_hand():
    cs = judges.prompts("meta_ranking", "Q?", "A", REFS)
    assert [c.target_slot for c in cs] == [0, 1, 0, 1, 0] and [c.reference for c in cs] == [0, 1, 2, 3, 4]
    first, second = cs[0].messages[1]["content"], cs[1].messages[1]["content"]
    assert first.index("Answer 1: A") < first.index("Answer 2: a0")
    assert second.index("Answer 1: a1") < second.index("Answer 2: A")
    # P(slot 1 verdict) = 0.8 everywhere: the target wins 0.8 when first, 0.2 when second
    lps = [[math.log(0.8), math.log(0.2)]] * 5
    wins = [0.8, 0.2, 0.8, 0.2, 0.8]
    want = (0.8 + 0.2 + 0.8 - 0.2 - 0.8) / 5
    assert judges.aggregate("meta_ranking", cs, lps, REFS) == pytest.approx(want)
    assert judges.meta_ranking_score(wins, [r.correct for r in REFS]) == pytest.approx(want)


def test_both_orders_average_out_a_slot_bias():
    cs = judges.prompts("meta_ranking", "Q?", "A", REFS[:2], both_orders=True)
    assert [(c.reference, c.target_slot) for c in cs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    biased = [[math.log(0.9), math.log(0.1)]] * 4  # always "1", whatever the content: no information
    assert judges.aggregate("meta_ranking", cs, biased, REFS[:2]) == pytest.approx(0.5)


def test_pointwise():
    [c] = judges.prompts("pointwise", "Q?", "A")
    assert "Question: Q?\nAnswer: A" in c.messages[1]["content"] and judges.verdicts("pointwise") == ("Yes", "No")
    assert judges.aggregate("pointwise", [c], [[math.log(0.3), math.log(0.1)]]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="reference"):
        judges.prompts("meta_ranking", "Q?", "A", [])


def test_window_bounds_from_quantiles():
    s = [float(i) for i in range(10)]  # 0..9
    assert judges.threshold_quantile(s, 4.5) == 0.5
    assert judges.quantile(s, 0.4) == pytest.approx(3.6) and judges.quantile(s, 0.6) == pytest.approx(5.4)
    assert judges.window_bounds(s, 4.5, 0.1) == pytest.approx((3.6, 5.4))
    assert judges.window_bounds(s, 4.5, 0.0) == (4.5, 4.5)
    assert judges.window_bounds(s, 4.5, 0.5) == (-math.inf, math.inf)
    lo, hi = judges.window_bounds(s, 8.5, 0.2)  # q = 0.9: the top edge opens
    assert lo == pytest.approx(judges.quantile(s, 0.7)) and hi == math.inf
    with pytest.raises(ValueError, match=r"\[0, 0.5\]"):
        judges.window_bounds(s, 4.5, 0.6)


def test_window_membership():
    w = Window(-1.0, -0.2)
    assert w.inside(-1.0) and w.inside(-0.5) and w.inside(-0.2)
    assert not w.inside(-1.01) and not w.inside(0.0) and not w.inside(None) and not w.inside(math.nan)
    assert Window().inside(-1e9)


def test_references_are_balanced_distinct_and_alternate():
    from serving.evaluation.judging import pick_references

    qs = [f"q{i}" for i in range(12)]
    answers = [f"a{i}" for i in range(12)]
    answers[0] = " "  # an empty answer is never a reference
    good = [i % 3 == 0 for i in range(12)]  # 4 good (0, 3, 6, 9), 8 bad
    tasks = ["t" + str(i % 4) for i in range(12)]
    idx = pick_references(qs, answers, good, 5, seed=1, tasks=tasks)
    assert len(idx) == 5 and 0 not in idx and len(set(idx)) == 5
    assert [good[i] for i in idx] == [True, False, True, False, True]  # 3 good, 2 bad, alternating
    assert len({tasks[i] for i in idx}) == 4  # distinct tasks first, then filled up (only 4 tasks here)
    assert pick_references(qs, answers, good, 5, seed=1, tasks=tasks) == idx  # seeded
    assert len(pick_references(qs, answers, [False] * 12, 4)) == 2  # no good answers: only the 2 bad ones asked for


def test_judged_decisions_and_the_judge_threshold():
    import numpy as np

    from serving.evaluation.calibrate import judged_decisions
    from serving.evaluation.judging import judge_threshold

    scores = np.array([-3.0, -0.8, -0.6, -0.3, -0.1])
    judge = np.array([0.9, 0.1, 0.8, 0.2, 0.0])
    # threshold -0.5, window [-1, -0.2]: -3 deferred by the rule, -0.1 kept by it; the judge the middle three
    jt = judge_threshold(judge[1:4], 2)  # the rule would defer two of them (-0.8, -0.6): the judge defers two too
    assert 0.2 < jt <= 0.8
    defer, inside = judged_decisions(scores, judge, -0.5, -1.0, -0.2, jt)
    assert list(inside) == [False, True, True, True, False]
    assert list(defer) == [True, True, False, True, False]
