"""Post-hoc features and models: pure code."""

import json

import numpy as np
import pytest

from serving.deferral import build_scorer
from serving.deferral.posthoc import QUANTILE_GRID, PostHocModel, fit_posthoc, quantile_features


def test_quantile_features_by_hand():
    f = quantile_features([-1.0, -3.0, 0.0, -2.0])
    assert len(f) == len(QUANTILE_GRID) + 1
    assert f[0] == -3.0 and f[len(QUANTILE_GRID) - 1] == 0.0  # alpha 0 = min, alpha 1 = max
    assert f[5] == pytest.approx(-1.5)  # alpha 0.5: median of -3,-2,-1,0
    assert f[1] == pytest.approx(-3.0 + 0.3 * 1.0)  # alpha 0.1: position 0.3 between -3 and -2
    assert f[-1] == 4.0  # length
    assert quantile_features([]).tolist() == [0.0] * (len(QUANTILE_GRID) + 1)


def _synthetic(n=400, seed=0):
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < 0.6
    lps = [list(np.minimum(0, rng.normal(-0.05 if c else -1.5, 0.3, rng.integers(3, 9)))) for c in correct]
    emb = rng.normal(0, 1, (n, 8)) + correct[:, None] * 0.5
    return lps, correct.astype(float), emb


@pytest.mark.parametrize("kind", ["quantile", "embed"])
def test_posthoc_learns_to_rank_correct_answers_higher_and_round_trips(kind):
    lps, y, emb = _synthetic()
    m = fit_posthoc(kind, lps, y, emb if kind == "embed" else None)
    scorer = build_scorer(f"post_hoc_{kind}", model=json.loads(json.dumps(m.to_dict())))
    assert scorer.needs_embedding == (kind == "embed")
    s = np.array([scorer(lp, e) for lp, e in zip(lps, emb)])
    assert s[y == 1].mean() > s[y == 0].mean() + 2  # log-odds separate
    assert s[0] == pytest.approx(m.score(lps[0], emb[0]))
    with pytest.raises(ValueError, match="post_hoc_"):
        build_scorer("post_hoc_embed" if kind == "quantile" else "post_hoc_quantile", model=m.to_dict())


def test_posthoc_needs_both_classes_and_a_model():
    lps, y, _ = _synthetic()
    with pytest.raises(ValueError, match="both correct and wrong"):
        fit_posthoc("quantile", lps, np.ones(len(lps)))
    with pytest.raises(ValueError, match="needs a fitted model"):
        build_scorer("post_hoc_quantile")
    bad = fit_posthoc("quantile", lps, y).to_dict() | {"grid": [0.0, 1.0]}
    with pytest.raises(ValueError, match="grid"):
        PostHocModel.from_dict(bad)
