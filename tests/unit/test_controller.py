"""The budget controller: pure code."""

import numpy as np
import pytest

from serving.deferral.controller import BudgetController
from serving.evaluation.thresholds import threshold_for_deferral


def test_budget_controller_holds_its_target_under_a_shift():
    rng = np.random.default_rng(0)
    easy, hard = rng.normal(-0.1, 0.05, 2000), rng.normal(-2.0, 0.5, 2000)
    stream = np.r_[easy, hard]
    fixed = threshold_for_deferral(np.r_[easy[:500], hard[:500]], 0.3)  # calibrated on a 50/50 mix
    ctl = BudgetController(0.3, fixed, window=200, warmup=50)
    defer = np.array([ctl.decide(s)[0] for s in stream])
    for start in list(range(250, 2000, 250)) + list(range(2250, 4000, 250)):  # skip the window after each change
        share = defer[start : start + 250].mean()
        assert abs(share - 0.3) <= 0.06, (start, share)
    assert (stream[:2000] < fixed).mean() < 0.05 and (stream[2000:] < fixed).mean() > 0.5  # fixed drifts


def test_budget_controller_uses_the_calibrated_threshold_until_warm():
    ctl = BudgetController(0.5, -1.0, window=10, warmup=5)
    assert [ctl.decide(-2.0)[1] for _ in range(5)] == [-1.0] * 5
    assert ctl.threshold() == -2.0
    with pytest.raises(ValueError):
        BudgetController(1.0, 0.0)
