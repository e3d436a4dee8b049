import math

import pytest

from serving.deferral import chow_average, chow_quantile, chow_sum, make_rule, should_defer

LP = [-0.1, -2.0, -0.5, -0.3]


def test_chow_sum_is_log_probability_of_the_answer():
    assert chow_sum(LP) == pytest.approx(-2.9)
    assert math.exp(chow_sum([math.log(0.5), math.log(0.5)])) == pytest.approx(0.25)


def test_chow_average_normalises_length():
    assert chow_average(LP) == pytest.approx(-2.9 / 4)
    assert chow_average([-1.0] * 10) == pytest.approx(chow_average([-1.0]))


def test_chow_quantile_alpha_zero_is_the_least_likely_token():
    assert chow_quantile(LP, 0.0) == pytest.approx(-2.0)
    assert chow_quantile(LP, 1.0) == pytest.approx(-0.1)
    # median of sorted [-2.0, -0.5, -0.3, -0.1] with linear interpolation
    assert chow_quantile(LP, 0.5) == pytest.approx(-0.4)


def test_empty_answer_scores_zero_and_alpha_is_checked():
    assert chow_sum([]) == chow_average([]) == chow_quantile([], 0.3) == 0.0
    with pytest.raises(ValueError, match="alpha"):
        chow_quantile(LP, 1.5)


def test_make_rule_registry_lists_valid_choices():
    assert make_rule("chow_quantile", 0.0)(LP) == pytest.approx(-2.0)
    assert make_rule("chow_sum")(LP) == pytest.approx(-2.9)
    with pytest.raises(ValueError, match="valid rules: .*chow_average"):
        make_rule("chow_max")


def test_defer_below_threshold_only():
    assert should_defer(-1.0, -0.5)
    assert not should_defer(-0.5, -0.5)
    assert not should_defer(-0.1, -0.5)
    assert should_defer(float("nan"), -0.5)
