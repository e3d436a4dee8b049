"""Deferral as math: the confidence rules (``rules.py``: Chow-Sum/Average/Quantile; ``posthoc.py``: the
learned post-hoc rules), their incremental forms and the boundary's rule as plain data (``incremental.py``:
Decision, StopRule), the budget controller (``controller.py``) and load-aware deferral's governor
(``load_aware.py``). Plain parameters in: no config, no Ray, no gRPC, no torch; nothing of ``serving``
is imported here. Fitting and threshold search are offline work: ``serving.evaluation``."""

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

__all__ = [
    "POST_HOC_RULES",
    "RULES",
    "Scorer",
    "build_scorer",
    "chow_average",
    "chow_quantile",
    "chow_sum",
    "make_rule",
    "should_defer",
]
