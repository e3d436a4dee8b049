"""Learned post-hoc deferral rules (Gupta et al., 2024: Post-Hoc-Quantile, Post-Hoc-Embed).

Features of a weak answer: its token log-prob quantiles on a fixed grid plus its length (and, for
``embed``, the weak model's embedding of the answer). A logistic regression, trained on labelled
data to predict whether the weak answer is correct, turns them into a score: the log-odds that the
weak answer is right (higher = surer). Fitting uses scikit-learn; applying the saved model is a
dot product in numpy, cheap enough for the router's hot path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal, Optional

import numpy as np

QUANTILE_GRID = tuple(float(x) for x in np.round(np.linspace(0.0, 1.0, 11), 2))
Kind = Literal["quantile", "embed"]


def quantile_features(logprobs: Sequence[float], grid: Sequence[float] = QUANTILE_GRID) -> np.ndarray:
    """Quantiles of the token log-probs on ``grid``, then the answer length in tokens."""
    lp = np.asarray(logprobs, dtype=np.float64)
    q = np.quantile(lp, grid) if len(lp) else np.zeros(len(grid))
    return np.r_[q, float(len(lp))]


def features(kind: Kind, logprobs: Sequence[float], embedding: Optional[Sequence[float]] = None) -> np.ndarray:
    f = quantile_features(logprobs)
    if kind == "embed":
        if embedding is None:
            raise ValueError("post_hoc_embed needs the weak answer's embedding")
        f = np.r_[f, np.asarray(embedding, dtype=np.float64)]
    return f


@dataclass
class PostHocModel:
    kind: Kind
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float
    grid: tuple[float, ...] = QUANTILE_GRID

    @property
    def needs_embedding(self) -> bool:
        return self.kind == "embed"

    def score(self, logprobs: Sequence[float], embedding: Optional[Sequence[float]] = None) -> float:
        x = (features(self.kind, logprobs, embedding) - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(x @ np.asarray(self.coef) + self.intercept)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PostHocModel:
        d = dict(d)
        d["grid"] = tuple(d.get("grid", QUANTILE_GRID))
        if tuple(d["grid"]) != QUANTILE_GRID:
            raise ValueError(f"post-hoc model was fitted on quantile grid {d['grid']}, this build uses {QUANTILE_GRID}")
        return cls(**d)


def feature_matrix(kind: Kind, logprobs: Sequence[Sequence[float]], embeddings=None) -> np.ndarray:
    embs = embeddings if embeddings is not None else [None] * len(logprobs)
    return np.stack([features(kind, lp, e) for lp, e in zip(logprobs, embs)])


def fit_posthoc(
    kind: Kind,
    logprobs: Sequence[Sequence[float]],
    correct: Sequence[float],
    embeddings=None,
    c: float = 1.0,
    seed: int = 0,
) -> PostHocModel:
    """Logistic regression (L2, strength 1/c) on standardised features -> P(weak answer correct)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = feature_matrix(kind, logprobs, embeddings)
    y = (np.asarray(correct, dtype=np.float64) >= 0.5).astype(int)
    if len(set(y)) < 2:
        raise ValueError("post-hoc training data needs both correct and wrong weak answers")
    scaler = StandardScaler().fit(x)
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - scaler.mean_) / scale, y)
    return PostHocModel(
        kind=kind,
        mean=scaler.mean_.tolist(),
        scale=scale.tolist(),
        coef=clf.coef_[0].tolist(),
        intercept=float(clf.intercept_[0]),
    )
