"""Deferral rules as pure functions over token log-probs. No Ray, no gRPC."""

from serving.deferral.rules import RULES, chow_average, chow_quantile, chow_sum, make_rule, should_defer

__all__ = ["RULES", "chow_average", "chow_quantile", "chow_sum", "make_rule", "should_defer"]
