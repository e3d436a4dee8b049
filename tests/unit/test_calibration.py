"""Threshold calibration: pure code."""

import numpy as np
import pytest

from serving.evaluation.thresholds import operating_point, threshold_for_deferral, threshold_for_pgr


def test_threshold_for_deferral_is_exact_on_distinct_scores():
    s = np.arange(100.0)
    t = threshold_for_deferral(s, 0.3)
    assert (s < t).sum() == 30
    assert (s < threshold_for_deferral(s, 0.0)).sum() == 0
    assert (s < threshold_for_deferral(s, 1.0)).sum() == 100


def test_threshold_for_pgr_takes_the_least_deferral_reaching_it():
    scores, weak, strong = [0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1], [1, 1, 1, 0]
    t = threshold_for_pgr(scores, weak, strong, 1.0)
    op = operating_point(scores, weak, strong, t)
    assert op["deferral_share"] == 0.25 and op["pgr"] == pytest.approx(1.0)
    assert operating_point(scores, weak, strong, threshold_for_pgr(scores, weak, strong, 1.5))["deferral_share"] == 0.75
