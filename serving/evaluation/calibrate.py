"""`cascade calibrate`: fit the configured rule and pick its threshold for a target, write an artifact."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np

from serving.config import CascadeConfig
from serving.core.decoding import Decoding
from serving.evaluation.data import data_hash, load_jsonl
from serving.evaluation.fit import fit_rule, score_run
from serving.evaluation.offline import DEFAULT_CACHE, model_fingerprint, run_offline
from serving.evaluation.shadow_data import shadow_runs
from serving.evaluation.thresholds import operating_point, threshold_for_deferral, threshold_for_pgr

ARTIFACT_FORMAT = "cascade-calibration/1"


def calibrate(
    cfg: CascadeConfig,
    data: str,
    *,
    target_deferral: Optional[float] = None,
    target_pgr: Optional[float] = None,
    rule: Optional[str] = None,
    alpha: Optional[float] = None,
    train_data: Optional[str] = None,
    eval_data: Optional[str] = None,
    metric: str = "exact_match",
    cache: Path = DEFAULT_CACHE,
    holdout: float = 0.5,
    seed: int = 0,
    decide_within_tokens: Optional[int] = None,
    shadow: bool = False,
    decoding: Optional[Decoding] = None,
) -> dict:
    """Returns the artifact. The threshold is picked on ``data`` (its fit part); quality and the
    realised deferral share are reported on ``eval_data``, or on a held-out part of ``data``. With
    ``decide_within_tokens`` k the rule is fitted and applied on each answer's first k tokens (a
    decision window, config ``deferral.decide_within_tokens``). With ``shadow`` the data files are shadow
    samples (``shadow.path``): their recorded answers and log-probs, the next tier's answer as the
    reference; no model runs. ``decoding``: the decoding the tiers will serve with (default greedy): the
    threshold is fitted on answers decoded that way (the scores read the unmodified distribution's log-probs,
    but which tokens are emitted, and so the scores' spread, moves with sampling)."""
    if (target_deferral is None) == (target_pgr is None):
        raise ValueError("give exactly one of target_deferral and target_pgr")
    current = cfg.deferral.resolved()
    rule = rule or current["rule"]
    alpha = current["alpha"] if alpha is None else alpha
    weak_name, strong_name = cfg.tier_names[:2]

    def load(path: str, tiers: list[str]) -> tuple[list[dict], dict]:
        if shadow:
            return shadow_runs(path, metric, weak_name, strong_name)
        rows = load_jsonl(path)
        return rows, run_offline(cfg, rows, metric, cache, tiers=tiers, decoding=decoding)

    rows, runs = load(data, [weak_name, strong_name])
    weak, strong = runs[weak_name].prefix(decide_within_tokens), runs[strong_name]
    n = len(rows)
    if eval_data:
        fit_idx = np.arange(n)
    else:
        perm = np.random.default_rng(seed).permutation(n)
        cut = int(round(n * (1 - holdout)))
        fit_idx, held_idx = np.sort(perm[:cut]), np.sort(perm[cut:])
    train_rows, train_runs = load(train_data, [weak_name]) if train_data else (None, None)
    train_run = train_runs[weak_name].prefix(decide_within_tokens) if train_data else weak
    if rule == "post_hoc_embed" and train_run.embeddings.shape[1] == 0:
        raise ValueError(
            "post_hoc_embed needs answer embeddings; these shadow samples have none (the router records "
            "them only when a boundary's rule reads them)"
        )
    scorer, model = fit_rule(rule, alpha, train_run, None if train_data else fit_idx)
    fit_scores = score_run(scorer, weak, fit_idx)
    wq, sq = weak.quality[fit_idx], strong.quality[fit_idx]
    if target_deferral is not None:
        threshold, target = (
            threshold_for_deferral(fit_scores, target_deferral),
            {"kind": "deferral", "value": target_deferral},
        )
    else:
        threshold, target = threshold_for_pgr(fit_scores, wq, sq, target_pgr), {"kind": "pgr", "value": target_pgr}
    metrics = {"fit": operating_point(fit_scores, wq, sq, threshold)}
    if eval_data:
        erows, eruns = load(eval_data, [weak_name, strong_name])
        metrics["heldout"] = operating_point(
            score_run(scorer, eruns[weak_name].prefix(decide_within_tokens)),
            eruns[weak_name].quality,
            eruns[strong_name].quality,
            threshold,
        )
        held_desc = {"path": str(eval_data), "sha256": data_hash(erows)}
    else:
        metrics["heldout"] = operating_point(
            score_run(scorer, weak, held_idx), weak.quality[held_idx], strong.quality[held_idx], threshold
        )
        held_desc = {"path": str(data), "part": f"{holdout:.0%} held out of it (seed {seed})"}
    return {
        "format": ARTIFACT_FORMAT,
        "rule": rule,
        "alpha": alpha if rule == "chow_quantile" else None,
        "model": model,
        "threshold": threshold,
        "target": target,
        "metric": metric,
        "decide_within_tokens": decide_within_tokens,
        "decoding": asdict(decoding or Decoding()),
        "data": {"path": str(data), "sha256": data_hash(rows), "n": n, "n_fit": int(len(fit_idx))}
        | ({"kind": "shadow", "min_score": float(score_run(scorer, weak).min())} if shadow else {}),
        "train_data": (
            {"path": str(train_data), "sha256": data_hash(train_rows)}
            if train_data
            else ("fit part of data" if model else None)
        ),
        "heldout_data": held_desc,
        "metrics": metrics,
        "tiers": {t.name: {"source": t.model.source, "fingerprint": model_fingerprint(t)} for t in cfg.tiers[:2]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
