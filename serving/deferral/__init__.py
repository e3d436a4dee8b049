"""Deferral rules, learned post-hoc rules, calibration and the budget controller: pure functions and
small classes over arrays. No Ray, no gRPC."""

from serving.deferral.rules import (
    POST_HOC_RULES,
    RULES,
    Scorer,
    build_scorer,
    chow_average,
    chow_quantile,
    chow_sum,
    make_rule,
    should_defer,
)

__all__ = ["POST_HOC_RULES", "RULES", "Scorer", "build_scorer", "chow_average", "chow_quantile", "chow_sum",
           "make_rule", "should_defer"]
