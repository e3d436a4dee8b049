"""Threshold calibration: pick the threshold that meets a target deferral share or a target PGR."""

from __future__ import annotations

import numpy as np

from serving.evaluation.curves import deferral_curve


def _between(sorted_scores: np.ndarray, k: int) -> float:
    """A threshold with exactly the ``k`` lowest scores strictly below it (midpoint between neighbours)."""
    n = len(sorted_scores)
    if k <= 0:
        return float(sorted_scores[0])
    if k >= n:
        return float(np.nextafter(sorted_scores[-1], np.inf))
    lo, hi = sorted_scores[k - 1], sorted_scores[k]
    return float(lo + (hi - lo) / 2) if hi > lo else float(hi)


def threshold_for_deferral(scores, target: float) -> float:
    """Defer (score < threshold) about ``target`` of these scores."""
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target deferral share must be in [0, 1], got {target}")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    return _between(s, int(round(target * len(s))))


def threshold_for_pgr(scores, weak_q, strong_q, target: float) -> float:
    """The least deferral whose cascade recovers ``target`` of the weak→strong quality gap."""
    curve = deferral_curve(scores, weak_q, strong_q)
    hit = np.nonzero(curve.pgr >= target - 1e-12)[0]
    share = curve.share[hit[0]] if len(hit) else 1.0
    s = np.sort(np.asarray(scores, dtype=np.float64))
    return _between(s, int(round(share * len(s))))


def operating_point(scores, weak_q, strong_q, threshold: float) -> dict:
    """Deferral share, cascade quality and PGR of a threshold on labelled data."""
    scores, weak_q, strong_q = (np.asarray(x, dtype=np.float64) for x in (scores, weak_q, strong_q))
    defer = scores < threshold
    q = float(np.where(defer, strong_q, weak_q).mean())
    qw, qs = float(weak_q.mean()), float(strong_q.mean())
    return {
        "n": int(len(scores)),
        "deferral_share": float(defer.mean()),
        "quality": q,
        "weak_quality": qw,
        "strong_quality": qs,
        "pgr": (q - qw) / (qs - qw) if qs != qw else 0.0,
    }
