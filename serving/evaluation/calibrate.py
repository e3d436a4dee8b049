"""`cascade calibrate`: fit the configured rule and pick its threshold for a target, write an artifact."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from serving.config import CascadeConfig, Tier
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
    judge: Optional[JudgeSpec] = None,
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
    rule = rule or current.rule
    alpha = current.alpha if alpha is None else alpha
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
    fitted_judge = None
    if judge is not None:
        if shadow:
            raise ValueError("--judge needs the prompts and labelled answers of --data, not shadow samples")
        held = (erows, eruns) if eval_data else None
        fitted_judge = _calibrate_judge(
            judge, rows, weak, strong, scorer, threshold, fit_idx, None if eval_data else held_idx, held, cache
        )
    art = {
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
    if fitted_judge is not None:
        art["judge"] = fitted_judge
    return art


@dataclass
class JudgeSpec:
    """What ``cascade calibrate --judge`` fits: a judge (``tier``: its model as a tier that only scores) with
    ``method``, ``references`` picked from the fit data, a ``window`` (None: every request judged)."""

    method: str
    tier: Tier
    references: int = 5
    window: Optional[float] = 0.1
    both_orders: bool = False
    seed: int = 0


def judged_decisions(scores, judge_scores, threshold: float, low: float, high: float, judge_threshold: float):
    """Defer? per example with the judge deciding inside [low, high] (the rule outside it)."""
    scores, judge_scores = np.asarray(scores, float), np.asarray(judge_scores, float)
    inside = (scores >= low) & (scores <= high)
    return np.where(inside, judge_scores < judge_threshold, scores < threshold), inside


def _judged_point(defer, inside, wq, sq) -> dict:
    q = float(np.where(defer, sq, wq).mean())
    qw, qs = float(wq.mean()), float(sq.mean())
    return {
        "n": int(len(defer)),
        "deferral_share": float(defer.mean()),
        "judged_share": float(inside.mean()),
        "quality": q,
        "weak_quality": qw,
        "strong_quality": qs,
        "pgr": (q - qw) / (qs - qw) if qs != qw else 0.0,
    }


def _calibrate_judge(spec: JudgeSpec, rows, weak, strong, scorer, threshold, fit_idx, held_idx, held, cache) -> dict:
    """References (balanced good/bad weak answers of the fit part), the window's bounds on the fit scores and the
    judge threshold: inside the window the judge defers as many fit answers as the rule would have (same
    deferral share; the judge picks which). Reported on the held-out part like the rule."""
    import math

    from serving.deferral.judges import Reference, window_bounds
    from serving.evaluation.judging import JudgeCache, judge_rows, judge_threshold, pick_references, score_quantiles

    scores = score_run(scorer, weak)
    good = weak.quality >= 0.5
    questions = [r["prompt"] for r in rows]
    tasks = [r.get("task") for r in rows] if all("task" in r for r in rows) else None
    refs: list[int] = []
    if spec.method == "meta_ranking":
        local = pick_references(
            [questions[i] for i in fit_idx],
            [weak.texts[i] for i in fit_idx],
            good[fit_idx],
            spec.references,
            spec.seed,
            [tasks[i] for i in fit_idx] if tasks else None,
        )
        refs = [int(fit_idx[j]) for j in local]
    references = [Reference(questions[i], weak.texts[i], bool(good[i])) for i in refs]
    fit_scores = np.sort(scores[fit_idx])
    low, high = (-math.inf, math.inf) if spec.window is None else window_bounds(fit_scores, threshold, spec.window)
    jc = JudgeCache(spec.tier, cache)
    try:
        use = np.array([i for i in fit_idx if i not in refs and low <= scores[i] <= high], dtype=int)
        js, _, _ = judge_rows(jc, spec.method, questions, weak.texts, references, spec.both_orders, use)
        jt = judge_threshold(js[use], int((scores[use] < threshold).sum()))
        keep = np.array([i for i in fit_idx if i not in refs], dtype=int)
        d, inside = judged_decisions(scores[keep], js[keep], threshold, low, high, jt)
        metrics = {"fit": _judged_point(d, inside, weak.quality[keep], strong.quality[keep])}
        if held is not None:  # --eval-data
            erows, eruns = held
            ew, es = eruns[weak.tier], eruns[strong.tier]
            escores = score_run(scorer, ew)
            hidx = np.array([i for i in range(len(erows)) if low <= escores[i] <= high], dtype=int)
            ej, _, _ = judge_rows(
                jc, spec.method, [r["prompt"] for r in erows], ew.texts, references, spec.both_orders, hidx
            )
            d, inside = judged_decisions(escores, ej, threshold, low, high, jt)
            metrics["heldout"] = _judged_point(d, inside, ew.quality, es.quality)
        else:
            hidx = np.array([i for i in held_idx if low <= scores[i] <= high], dtype=int)
            js2, _, _ = judge_rows(jc, spec.method, questions, weak.texts, references, spec.both_orders, hidx)
            d, inside = judged_decisions(scores[held_idx], js2[held_idx], threshold, low, high, jt)
            metrics["heldout"] = _judged_point(d, inside, weak.quality[held_idx], strong.quality[held_idx])
    finally:
        jc.close()
    return {
        "method": spec.method,
        "model": {"source": spec.tier.model.source, "fingerprint": model_fingerprint(spec.tier)},
        "references": [r.as_dict() for r in references],
        "both_orders": spec.both_orders,
        "threshold": float(jt),
        "window": spec.window,
        "bounds": [None if math.isinf(low) else float(low), None if math.isinf(high) else float(high)],
        "score_quantiles": score_quantiles(scores[fit_idx]),
        "n_judged_fit": int(len(use)),
        "metrics": metrics,
    }
