"""Deferral curves and their summaries (Gupta et al., 2024).

Given per-example confidence scores of the weak answer and the per-example quality of the weak and
strong answers, deferring the ``k`` least confident examples gives the cascade quality
``q(k) = (sum of strong quality over deferred + weak quality over the rest) / n``. The deferral
curve is ``q`` against the share deferred ``k / n``. Ties in the score are deferred together, and
the curve runs straight across a tied group (the expectation under random tie-breaking).

- AUC: area under the deferral curve, share in [0, 1].
- PGR(share) = (q - q_weak) / (q_strong - q_weak): the share of the quality gap recovered.
- APGR: area under the PGR curve (random deferral: 0.5 in expectation).
- CPT(p): the smallest share deferred at which PGR reaches p.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Curve:
    share: np.ndarray  # share deferred at each curve point, from 0 to 1
    quality: np.ndarray  # cascade quality at that share
    q_weak: float
    q_strong: float

    @property
    def pgr(self) -> np.ndarray:
        gap = self.q_strong - self.q_weak
        return (self.quality - self.q_weak) / gap if gap else np.zeros_like(self.quality)


def deferral_curve(scores, weak_q, strong_q, cost=None) -> Curve:
    """``cost``: what deferring each example costs, as a share of one strong answer (default 1 each);
    the curve's x is then the cost spent, e.g. the share of requests that needed strong *decoding* when
    the strong tier verifies the weak draft and a fully accepted draft costs no decoding (cost 0)."""
    scores, weak_q, strong_q = (np.asarray(x, dtype=np.float64) for x in (scores, weak_q, strong_q))
    n = len(scores)
    if not n == len(weak_q) == len(strong_q) or n == 0:
        raise ValueError("scores, weak_q and strong_q must be non-empty and of one length")
    cost = np.ones(n) if cost is None else np.asarray(cost, dtype=np.float64)
    order = np.argsort(scores, kind="stable")
    s, gain = scores[order], (strong_q - weak_q)[order]
    # Curve points only at the ends of groups of tied scores.
    ends = np.r_[np.nonzero(np.diff(s))[0] + 1, n]
    cum_gain = np.r_[0.0, np.cumsum(gain)[ends - 1]]
    share = np.r_[0.0, np.cumsum(cost[order])[ends - 1]] / n
    quality = (weak_q.sum() + cum_gain) / n
    if share[-1] < 1.0:  # cheaper than one strong answer each: a bigger budget buys nothing more
        share, quality = np.r_[share, 1.0], np.r_[quality, quality[-1]]
    return Curve(share, quality, float(weak_q.mean()), float(strong_q.mean()))


def auc(curve: Curve) -> float:
    return float(np.trapezoid(curve.quality, curve.share))


def apgr(curve: Curve) -> float:
    return float(np.trapezoid(curve.pgr, curve.share))


def cpt(curve: Curve, target: float) -> float:
    """Smallest share deferred reaching PGR >= target, interpolating along the curve (1.0 if never)."""
    pgr, share = curve.pgr, curve.share
    hit = np.nonzero(pgr >= target - 1e-12)[0]
    if len(hit) == 0:
        return 1.0
    i = hit[0]
    if i == 0:
        return float(share[0])
    p0, p1 = pgr[i - 1], pgr[i]
    return float(share[i - 1] + (share[i] - share[i - 1]) * (target - p0) / (p1 - p0))


def quality_at_share(curve: Curve, share: float) -> float:
    return float(np.interp(share, curve.share, curve.quality))


def share_for_quality(curve: Curve, target: float) -> float:
    """Least share deferred at which the cascade's quality reaches ``target`` x the strong tier's alone
    (e.g. 0.97 of strong-only's agreement, 0.95 of its correctness), along the curve; 1.0 if never."""
    goal = target * curve.q_strong
    hit = np.nonzero(curve.quality >= goal - 1e-12)[0]
    if len(hit) == 0:
        return 1.0
    i = hit[0]
    if i == 0:
        return float(curve.share[0])
    q0, q1 = curve.quality[i - 1], curve.quality[i]
    return float(curve.share[i - 1] + (curve.share[i] - curve.share[i - 1]) * (goal - q0) / (q1 - q0))


def summarize(curve: Curve) -> dict:
    return {
        "auc": auc(curve),
        "apgr": apgr(curve),
        "cpt": {str(p): cpt(curve, p / 100) for p in (50, 80, 95)},
        "share_for_quality": {str(p): share_for_quality(curve, p / 100) for p in (95, 97)},
    }


def random_curve(weak_q, strong_q) -> Curve:
    """Random deferral in expectation: a straight line from weak-only to strong-only."""
    w, s = float(np.mean(weak_q)), float(np.mean(strong_q))
    return Curve(np.array([0.0, 1.0]), np.array([w, s]), w, s)


def oracle_scores(weak_q, strong_q) -> np.ndarray:
    """Scores for the oracle that defers exactly the weak model's mistakes (those the strong model
    fixes first): a higher score keeps the weak answer."""
    weak_q, strong_q = np.asarray(weak_q, float), np.asarray(strong_q, float)
    return weak_q - 1e-3 * np.clip(strong_q - weak_q, 0, None)


def window_curve(scores, judge_scores, weak_q, strong_q, w: float) -> tuple[Curve, np.ndarray]:
    """The deferral curve of a window-gated judge (Xia & Bouganis, 2023): at each deferral share k/n the
    token-level threshold sits at the k-th lowest score; the answers ranked within ``w`` of it on either side
    ([k - wn, k + wn), clipped) are judged, and of those the judge defers the ones it scores lowest so that k
    are deferred in all (what ``cascade calibrate --judge`` fits: same deferral share as the rule, the judge
    picks which inside the window); below the window the rule defers, above it the rule accepts. Returns the
    curve and, per point, the share of requests judged. ``w >= 1`` judges every request: the judge's own curve."""
    scores, judge_scores, weak_q, strong_q = (
        np.asarray(x, dtype=np.float64) for x in (scores, judge_scores, weak_q, strong_q)
    )
    n = len(scores)
    order = np.argsort(scores, kind="stable")
    gain = (strong_q - weak_q)[order]
    js = judge_scores[order]
    half = int(round(w * n))
    quality, judged = np.empty(n + 1), np.empty(n + 1)
    base = weak_q.sum()
    prefix = np.r_[0.0, np.cumsum(gain)]
    for k in range(n + 1):
        lo, hi = max(0, k - half), min(n, k + half)
        inside = np.argsort(js[lo:hi], kind="stable")[: k - lo] + lo
        quality[k] = (base + prefix[lo] + gain[inside].sum()) / n
        judged[k] = (hi - lo) / n
    share = np.arange(n + 1) / n
    return Curve(share, quality, float(weak_q.mean()), float(strong_q.mean())), judged
