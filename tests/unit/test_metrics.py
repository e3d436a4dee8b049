"""Correctness metrics against hand-computed cases."""

import pytest

from serving.evaluation.quality import contains, exact_match, get_metric, numeric_match, token_f1


def test_metrics():
    assert exact_match(" The Answer. ", "answer") == 1.0 and exact_match("5198", "5199") == 0.0
    assert numeric_match("It is 5,198.", "5198") == 1.0 and numeric_match("none", "1") == 0.0
    assert numeric_match("-3.50", "-3.5") == 1.0
    assert contains("The capital is Paris.", "paris") == 1.0 and contains("Lyon", "Paris") == 0.0
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)  # p = 2/2, r = 2/3
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0
    with pytest.raises(ValueError, match="valid metrics"):
        get_metric("bleu")
