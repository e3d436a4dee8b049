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


def test_correct_scores_an_answer_against_the_ground_truth_offline_only():
    from serving.evaluation.quality import correct, offline_metric

    assert correct("The capital of Peru is Lima.", "Lima") == 1.0
    assert correct("The answer is 125.", "12") == 0.0
    score, field = offline_metric("correct")
    assert (score, field) == (correct, "truth")
    assert offline_metric("exact_match")[1] == "reference"
    with pytest.raises(ValueError, match="unknown metric 'correct'"):
        get_metric("correct")  # shadow traffic has no ground truth: answer-vs-answer metrics only
    with pytest.raises(ValueError, match="valid metrics"):
        offline_metric("bleu")
