"""Fit and apply every deferral rule to offline runs (shared by calibration and the benchmark)."""

from __future__ import annotations

from typing import Optional

import numpy as np

from serving.deferral import POST_HOC_RULES, Scorer, build_scorer
from serving.deferral.posthoc import fit_posthoc
from serving.evaluation.offline import OfflineTierRun

CHOW_QUANTILE_ALPHAS = (0.0, 0.1, 0.25, 0.5)
BENCH_RULES = (
    ["chow_sum", "chow_average"] + [f"chow_quantile_{a:g}" for a in CHOW_QUANTILE_ALPHAS] + list(POST_HOC_RULES)
)


def parse_rule(name: str) -> tuple[str, float]:
    """``chow_quantile_0.25`` -> (``chow_quantile``, 0.25); other names keep alpha 0."""
    if name.startswith("chow_quantile_"):
        return "chow_quantile", float(name.rsplit("_", 1)[1])
    return name, 0.0


def score_run(scorer: Scorer, run: OfflineTierRun, idx: Optional[np.ndarray] = None) -> np.ndarray:
    idx = np.arange(len(run.logprobs)) if idx is None else idx
    return np.array([scorer(run.logprobs[i], run.embeddings[i] if scorer.needs_embedding else None) for i in idx])


def fit_rule(
    rule: str, alpha: float, train: Optional[OfflineTierRun], idx: Optional[np.ndarray] = None
) -> tuple[Scorer, Optional[dict]]:
    """The scorer for a rule; post-hoc rules are trained on ``train`` (rows ``idx``) to predict
    whether the weak answer is correct. Returns the fitted model's dict for artifacts too."""
    if rule not in POST_HOC_RULES:
        return build_scorer(rule, alpha), None
    if train is None:
        raise ValueError(f"{rule} needs labelled training data")
    idx = np.arange(len(train.logprobs)) if idx is None else idx
    kind = rule.removeprefix("post_hoc_")
    model = fit_posthoc(
        kind, [train.logprobs[i] for i in idx], train.quality[idx], train.embeddings[idx] if kind == "embed" else None
    ).to_dict()
    return build_scorer(rule, model=model), model


def cross_fitted_scores(rule: str, alpha: float, run: OfflineTierRun, folds: int = 2, seed: int = 0) -> np.ndarray:
    """Scores on ``run`` from post-hoc models that never saw the example they score (k-fold)."""
    n = len(run.logprobs)
    fold = np.random.default_rng(seed).permutation(n) % folds
    out = np.empty(n)
    for k in range(folds):
        scorer, _ = fit_rule(rule, alpha, run, np.nonzero(fold != k)[0])
        test = np.nonzero(fold == k)[0]
        out[test] = score_run(scorer, run, test)
    return out
