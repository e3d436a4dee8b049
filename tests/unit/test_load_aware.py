"""Load-aware deferral (serving/deferral/load_aware.py): watermarks, hysteresis, ramp, floor."""

import pytest

from serving.config import LoadAware
from serving.deferral.load_aware import LoadGovernor


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def governor(**kw):
    clock = Clock()
    cfg = LoadAware(**{"high_watermark": 4, "low_watermark": 1, "floor": -3.0, "ramp_s": 2.0, **kw})
    return LoadGovernor(cfg, clock), clock


def test_below_the_high_watermark_the_threshold_is_the_base():
    g, clock = governor()
    for load in [0, 1, 2, 3, 2]:
        clock.t += 1
        assert g.threshold(-0.5, load) == -0.5


def test_saturation_ramps_down_to_the_floor_and_no_further():
    g, clock = governor()
    assert g.threshold(-0.5, 4) == -0.5  # shedding starts now; the ramp takes ramp_s
    clock.t += 1.0
    assert g.threshold(-0.5, 5) == pytest.approx(-0.5 - 0.5 * 2.5)  # halfway after 1 s of 2
    clock.t += 5.0
    assert g.threshold(-0.5, 9) == pytest.approx(-3.0)


def test_hysteresis_between_the_watermarks_keeps_the_direction():
    g, clock = governor()
    g.threshold(-0.5, 4)
    clock.t += 1.0
    # load between the watermarks (1 < 2 < 4): still shedding, the threshold keeps moving down
    assert g.threshold(-0.5, 2) == pytest.approx(-1.75)
    clock.t += 0.5
    assert g.threshold(-0.5, 2) == pytest.approx(-2.375)
    # at the low watermark shedding stops; the threshold moves back up at the same rate
    assert g.threshold(-0.5, 1) == pytest.approx(-2.375)
    clock.t += 0.5
    assert g.threshold(-0.5, 3) == pytest.approx(-1.75)  # between the watermarks: keeps recovering
    clock.t += 10
    assert g.threshold(-0.5, 3) == -0.5


def test_ramp_zero_jumps_and_a_base_below_the_floor_is_left_alone():
    g, clock = governor(ramp_s=0, high_watermark=1, low_watermark=0)
    assert g.threshold(-0.5, 1) == -3.0
    assert g.threshold(-5.0, 1) == -5.0  # e.g. the budget controller's threshold already below the floor
    assert g.threshold(-0.5, 0) == -0.5


def test_level_follows_a_moving_base():
    g, clock = governor(ramp_s=0, high_watermark=1, low_watermark=0, floor=-1.0)
    g.update(1)
    assert g.threshold(0.0, 1) == -1.0 and g.threshold(-0.9, 1) == -1.0
