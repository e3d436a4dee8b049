"""Deferral-curve math against hand-computed cases."""

import numpy as np
import pytest

from serving.evaluation.curves import (
    apgr,
    auc,
    cpt,
    deferral_curve,
    oracle_scores,
    quality_at_share,
    random_curve,
    share_for_quality,
    summarize,
)

SCORES = [0.1, 0.2, 0.3, 0.4]
WEAK = [0, 1, 0, 1]
STRONG = [1, 1, 1, 0]


def test_curve_by_hand():
    c = deferral_curve(SCORES, WEAK, STRONG)
    # defer lowest scores first: gains 1, 0, 1, -1 on top of q_weak = 0.5
    assert c.share.tolist() == [0, 0.25, 0.5, 0.75, 1.0]
    assert c.quality.tolist() == [0.5, 0.75, 0.75, 1.0, 0.75]
    assert (c.q_weak, c.q_strong) == (0.5, 0.75)
    assert c.pgr.tolist() == [0, 1, 1, 2, 1]
    assert auc(c) == pytest.approx(0.78125)
    assert apgr(c) == pytest.approx(1.125)
    assert cpt(c, 0.5) == pytest.approx(0.125)  # interpolated between (0, 0) and (0.25, 1)
    assert cpt(c, 0.95) == pytest.approx(0.2375)
    assert cpt(c, 3.0) == 1.0  # never reached
    assert quality_at_share(c, 0.6) == pytest.approx(0.85)
    # 0.95 x strong-only's 0.75 = 0.7125: between (0, 0.5) and (0.25, 0.75), at 0.2125 / 0.25 of the way
    assert share_for_quality(c, 0.95) == pytest.approx(0.2125)
    assert share_for_quality(c, 0.5) == 0.0  # weak alone is already there
    assert share_for_quality(c, 1.5) == 1.0  # never reached


def test_ties_are_deferred_together():
    c = deferral_curve([0.1, 0.1, 0.3, 0.4], WEAK, STRONG)
    assert c.share.tolist() == [0, 0.5, 0.75, 1.0]
    assert c.quality.tolist() == [0.5, 0.75, 1.0, 0.75]
    assert auc(c) == pytest.approx(0.75)


def test_random_and_oracle():
    r = random_curve(WEAK, STRONG)
    assert apgr(r) == pytest.approx(0.5) and auc(r) == pytest.approx(0.625)
    assert summarize(r)["cpt"] == {"50": pytest.approx(0.5), "80": pytest.approx(0.8), "95": pytest.approx(0.95)}
    o = deferral_curve(oracle_scores(WEAK, STRONG), WEAK, STRONG)
    # the oracle defers the two weak mistakes (both fixed by strong) first: quality 1.0 at share 0.5
    assert quality_at_share(o, 0.5) == pytest.approx(1.0)
    assert cpt(o, 1.0) == pytest.approx(0.25)  # the strong-only quality (0.75) is already matched there
    assert cpt(o, 2.0) == pytest.approx(0.5)
    # an informative rule lies between random and oracle
    rng = np.random.default_rng(0)
    w = rng.random(400) < 0.6
    s = np.ones(400)
    noisy = w + rng.normal(0, 0.7, 400)
    rule = apgr(deferral_curve(noisy, w, s))
    assert apgr(random_curve(w, s)) < rule < apgr(deferral_curve(oracle_scores(w, s), w, s))


def test_curve_input_checks():
    with pytest.raises(ValueError):
        deferral_curve([], [], [])
    with pytest.raises(ValueError):
        deferral_curve([1, 2], [1], [1, 0])


def test_a_cost_per_deferral_moves_the_curve_left():
    scores, weak, strong = [0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], [1, 0, 1, 1]
    plain = deferral_curve(scores, weak, strong)
    cheap = deferral_curve(scores, weak, strong, cost=[1, 0, 0, 1])  # two deferrals cost nothing
    assert cheap.quality[-1] == plain.quality[-1] == 0.75
    assert list(cheap.share) == [0.0, 0.25, 0.25, 0.25, 0.5, 1.0]
    assert list(cheap.quality[:5]) == list(plain.quality)


def test_window_curve_by_hand():
    from serving.evaluation.curves import deferral_curve, window_curve

    # four answers by token score: the two in the middle are swapped by the judge, who knows better
    scores = [0.1, 0.2, 0.3, 0.4]
    judge = [0.0, 0.9, 0.1, 1.0]
    weak_q = [0.0, 1.0, 0.0, 1.0]  # the second-lowest token score is a good answer, the third a bad one
    strong_q = [1.0, 1.0, 1.0, 1.0]
    curve, judged = window_curve(scores, judge, weak_q, strong_q, 0.25)  # one rank on either side
    # k=2: window ranks [1, 3): the judge defers rank 2 (0.1) not rank 1 (0.9): quality (1 + 1 + 1 + 1)/4
    assert curve.quality[2] == 1.0 and deferral_curve(scores, weak_q, strong_q).quality[2] == 0.75
    assert list(judged) == [0.25, 0.5, 0.5, 0.5, 0.25]
    full, judged = window_curve(scores, judge, weak_q, strong_q, 1.0)
    assert list(full.quality) == list(deferral_curve(judge, weak_q, strong_q).quality) and judged.min() == 1.0
    same, judged = window_curve(scores, judge, weak_q, strong_q, 0.0)
    assert list(same.quality) == list(deferral_curve(scores, weak_q, strong_q).quality) and judged.max() == 0.0
