"""Evaluate the shipped arithmetic toy pair on held-out arithmetic questions at the configured threshold.

    python -m serving.default_models.evaluate [--split test] [--n 500] [--json OUT]

Runs both tiers through the server's backend (offline, cached), then prints weak / strong exact
match and the cascade's deferral share and accuracy for a sweep of thresholds and the config's
own. The default threshold was read off this sweep on the calibration split (``--split
calibration``): the least deferral with cascade accuracy >= 98 %. For other targets use
``cascade calibrate``.
"""

from __future__ import annotations

import argparse
import json

from serving.config import TOY_CONFIG, load_config
from serving.deferral import build_scorer
from serving.evaluation.data import SPLIT_SEEDS
from serving.evaluation.fit import score_run
from serving.evaluation.offline import run_offline
from serving.evaluation.thresholds import operating_point
from serving.tasks.arithmetic import examples

SWEEP = [-2.0, -1.0, -0.7, -0.5, -0.3, -0.2, -0.1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--split", choices=["calibration", "test"], default="test")
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = load_config(args.config or TOY_CONFIG)
    weak, strong = cfg.tier_names[:2]
    rows = [{"prompt": e.prompt, "reference": e.reference} for e in examples(SPLIT_SEEDS[args.split], args.n)]
    runs = run_offline(cfg, rows, tiers=[weak, strong])
    rule = cfg.deferral.resolved()
    scores = score_run(build_scorer(rule.rule, rule.alpha, rule.model), runs[weak])
    points = [
        operating_point(scores, runs[weak].quality, runs[strong].quality, t) | {"threshold": t}
        for t in SWEEP + [rule.threshold]
    ]
    report = {
        "split": args.split,
        "n": args.n,
        "rule": rule.rule,
        "alpha": rule.alpha,
        "threshold": rule.threshold,
        "weak_accuracy": points[0]["weak_quality"],
        "strong_accuracy": points[0]["strong_quality"],
        "oracle_deferral_share": float((runs[weak].quality < 1).mean()),
        "at_threshold": points[-1],
        "sweep": points[:-1],
    }
    print(
        f"{args.split} split (n={args.n}): weak {report['weak_accuracy']:.3f}  strong {report['strong_accuracy']:.3f}  "
        f"oracle defers {report['oracle_deferral_share']:.3f}"
    )
    print(f"{'threshold':>10} {'deferred':>9} {'cascade':>8}")
    for p in points:
        print(f"{p['threshold']:>10.2f} {p['deferral_share']:>9.3f} {p['quality']:>8.3f}")
    print(f"(last row: the config's {rule.rule} threshold)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
