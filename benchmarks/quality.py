"""Deferral-curve benchmark: how well does each rule pick the requests to defer?

    python -m benchmarks.quality --config serving/default_config.yaml \
        --train-data data/arithmetic_train.jsonl --data data/arithmetic_test.jsonl \
        --out results/quality.json --plot results/quality.png

(`cascade data --out data` writes those splits.) Runs the first two tiers over the data in-process
(cached), scores every weak answer with every rule — chow_sum, chow_average, chow_quantile_<α>,
post_hoc_quantile, post_hoc_embed (trained on --train-data, or 2-fold cross-fitted on --data when
it is absent) — plus random and oracle, and reports per rule the AUC of the deferral curve, APGR
and CPT(50/80/95). Also plots the length bias: Chow-Sum and Chow-Average vs output length.

Speculative deferral rows ``<rule> verify:decode``: the same deferral order, x = the share of requests
that needed strong decoding when the strong tier verifies the weak draft (a draft it fully agrees with
needs one strong forward pass and no decoding); the plain rows' x is the share that needed a strong
forward pass at all.

Decision windows (``deferral.decide_within_tokens: k``): rows ``<rule>@k`` score only the first k
tokens of each weak answer (post-hoc rules fitted on those prefixes), for each k in --windows, so the
quality cost of deciding after k tokens sits next to the full-answer rule. (post_hoc_embed has no
window form: it reads the whole answer's embedding.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from serving.config import TOY_CONFIG, load_config
from serving.evaluation.curves import deferral_curve, oracle_scores, random_curve, summarize
from serving.evaluation.data import data_hash, load_jsonl
from serving.evaluation.fit import BENCH_RULES, cross_fitted_scores, fit_rule, parse_rule, score_run
from serving.evaluation.offline import DEFAULT_CACHE, run_offline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--train-data", help="labelled JSONL the post-hoc rules learn from")
    ap.add_argument("--data", required=True, help="labelled JSONL the curves are measured on")
    ap.add_argument(
        "--metric",
        default="exact_match",
        help="comma-separated: one table and curve per metric, e.g. exact_match,correct (agreement with the "
        "reference answer and correctness against the rows' ground truth)",
    )
    ap.add_argument("--cache", default=str(DEFAULT_CACHE))
    ap.add_argument("--windows", default="2,4,8", help="decision windows k for the <rule>@k rows ('' for none)")
    ap.add_argument("--out", default="results/quality.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    cfg = load_config(args.config or TOY_CONFIG)  # default: the arithmetic toy pair
    rows = load_jsonl(args.data)
    train_rows = load_jsonl(args.train_data) if args.train_data else None
    windows = [None] + [int(k) for k in args.windows.split(",") if k.strip()]
    metrics = [m.strip() for m in args.metric.split(",") if m.strip()]
    report = {
        "n": len(rows),
        "data": args.data,
        "data_sha256": data_hash(rows),
        "train_data": args.train_data,
        "metrics": {},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for metric in metrics:
        curves, scores, weak, strong = rule_curves(cfg, rows, train_rows, metric, Path(args.cache), windows)
        report["metrics"][metric] = {
            "weak_quality": float(weak.quality.mean()),
            "strong_quality": float(strong.quality.mean()),
            "rules": {name: summarize(c) for name, c in curves.items()},
        }
        print_table(report["n"], metric, report["metrics"][metric])
        if args.plot:
            path = Path(args.plot)
            plot(
                curves, weak, scores, str(path if metric == metrics[0] else path.with_name(f"{path.stem}_{metric}.png"))
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))


def rule_curves(cfg, rows, train_rows, metric, cache, windows):
    """Every rule's deferral curve on ``rows`` with quality measured by ``metric`` (the tiers' runs are cached:
    another metric re-scores the same answers)."""
    weak_name, strong_name = cfg.tier_names[:2]
    runs = run_offline(cfg, rows, metric, cache, tiers=[weak_name, strong_name])
    weak, strong = runs[weak_name], runs[strong_name]
    train = run_offline(cfg, train_rows, metric, cache, tiers=[weak_name])[weak_name] if train_rows else None
    curves, scores = {}, {}
    for k in windows:
        w, t = weak.prefix(k), train.prefix(k) if train is not None else None
        for name in BENCH_RULES:
            if k is not None and name == "post_hoc_embed":
                continue
            rule, alpha = parse_rule(name)
            row = name if k is None else f"{name}@{k}"
            if rule.startswith("post_hoc") and t is None:
                scores[row] = cross_fitted_scores(rule, alpha, w)
            else:
                scorer, _ = fit_rule(rule, alpha, t)
                scores[row] = score_run(scorer, w)
            curves[row] = deferral_curve(scores[row], weak.quality, strong.quality)
    # Speculative deferral (deferral.on_defer: verify): the strong tier verifies the weak draft; where its
    # greedy answer equals the draft (the whole draft agrees) the deferred request needs a strong forward
    # pass but no strong decoding. Same quality at each deferral share; x = share needing strong decoding.
    agree = np.array([a == b for a, b in zip(weak.texts, strong.texts)], dtype=float)
    for name in ("chow_quantile_0", "chow_sum", "post_hoc_quantile"):
        curves[f"{name} verify:decode"] = deferral_curve(scores[name], weak.quality, strong.quality, 1.0 - agree)
    curves["random"] = random_curve(weak.quality, strong.quality)
    curves["oracle"] = deferral_curve(oracle_scores(weak.quality, strong.quality), weak.quality, strong.quality)
    return curves, scores, weak, strong


def print_table(n: int, metric: str, m: dict) -> None:
    """D95/D97: the least share deferred for the cascade to reach 95 % / 97 % of strong-only's quality."""
    print(f"n={n}  weak {m['weak_quality']:.3f}  strong {m['strong_quality']:.3f}  ({metric})")
    print(f"{'rule':<26} {'AUC':>6} {'APGR':>6} {'CPT50':>6} {'CPT80':>6} {'CPT95':>6} {'D95':>6} {'D97':>6}")
    for name, r in m["rules"].items():
        cpt, d = r["cpt"], r["share_for_quality"]
        print(
            f"{name:<26} {r['auc']:>6.3f} {r['apgr']:>6.3f} {cpt['50']:>6.3f} {cpt['80']:>6.3f} {cpt['95']:>6.3f} "
            f"{d['95']:>6.3f} {d['97']:>6.3f}"
        )


def plot(curves, weak, scores, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for name, c in curves.items():
        if "@" in name and not name.startswith("chow_quantile_0@"):
            continue  # the window rows of the default rule only: the table has them all
        style = {"random": dict(ls="--", c="grey"), "oracle": dict(ls=":", c="black")}.get(name, {})
        ax.plot(c.share, c.quality, label=name, **style)
    ax.set_xlabel("share deferred to the strong tier")
    ax.set_ylabel("cascade quality")
    ax.set_title("Deferral curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ok = weak.quality >= 0.5
    rng = np.random.default_rng(0)
    for ax, name in zip(axes, ["chow_sum", "chow_average"]):
        jitter = rng.uniform(-0.25, 0.25, len(ok))
        for mask, label, color in [(ok, "weak correct", "tab:green"), (~ok, "weak wrong", "tab:red")]:
            ax.scatter(weak.lengths[mask] + jitter[mask], scores[name][mask], s=6, alpha=0.4, label=label, c=color)
        ax.set_xlabel("output length (tokens)")
        ax.set_ylabel(f"{name} score")
        ax.set_title(f"Length bias: {name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(str(Path(path).with_name(Path(path).stem + "_length.png")), dpi=120)


if __name__ == "__main__":
    main()
