"""Budget controller vs a fixed threshold under a shifting query mix.

    python -m benchmarks.budget --target 0.3 --out results/budget.json --plot results/budget.png

The stream (arithmetic task) shifts from easy questions (operands of 1-2 digits) through the usual
mix to hard ones (4-5 digits). The fixed threshold is calibrated on the mixed calibration split for
the target share; the controller (serving.deferral.controller.BudgetController, the same class the
router runs with `deferral.target_deferral`) tracks the recent scores. Both see the weak tier's real
scores (offline run through the server's backend, cached); prints the realised deferral share and
the cascade accuracy per window.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from serving.config import TOY_CONFIG, load_config
from serving.deferral import build_scorer
from serving.deferral.controller import BudgetController
from serving.evaluation.data import SPLIT_SEEDS
from serving.evaluation.fit import score_run
from serving.evaluation.offline import run_offline
from serving.evaluation.thresholds import threshold_for_deferral
from serving.tasks.arithmetic import examples

PHASES = [
    ("easy (1-2 digits)", dict(max_digits=2)),
    ("mixed (1-5 digits)", {}),
    ("hard (4-5 digits)", dict(min_digits=4)),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--target", type=float, default=0.3)
    ap.add_argument("--per-phase", type=int, default=1000)
    ap.add_argument("--window", type=int, default=250, help="report window (requests)")
    ap.add_argument("--controller-window", type=int, default=200)
    ap.add_argument("--out", default="results/budget.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    cfg = load_config(args.config or TOY_CONFIG)  # default: the arithmetic toy pair
    weak, strong = cfg.tier_names[:2]
    rule = cfg.deferral.resolved()
    scorer = build_scorer(rule.rule, rule.alpha, rule.model)

    cal_rows = [{"prompt": e.prompt, "reference": e.reference} for e in examples(SPLIT_SEEDS["calibration"], 1000)]
    cal = run_offline(cfg, cal_rows, tiers=[weak])[weak]
    fixed = threshold_for_deferral(score_run(scorer, cal), args.target)

    rows, phase_of = [], []
    for k, (name, kw) in enumerate(PHASES):
        rows += [{"prompt": e.prompt, "reference": e.reference} for e in examples(100 + k, args.per_phase, **kw)]
        phase_of += [name] * args.per_phase
    runs = run_offline(cfg, rows, tiers=[weak, strong])
    scores = score_run(scorer, runs[weak])
    wq, sq = runs[weak].quality, runs[strong].quality

    ctl = BudgetController(args.target, fixed, window=args.controller_window, warmup=min(50, args.controller_window))
    ctl_defer = np.array([ctl.decide(s)[0] for s in scores])
    fixed_defer = scores < fixed
    windows = []
    for i in range(0, len(rows), args.window):
        sl = slice(i, i + args.window)
        windows.append(
            {
                "start": i,
                "phase": phase_of[i],
                "fixed_share": float(fixed_defer[sl].mean()),
                "controller_share": float(ctl_defer[sl].mean()),
                "fixed_accuracy": float(np.where(fixed_defer[sl], sq[sl], wq[sl]).mean()),
                "controller_accuracy": float(np.where(ctl_defer[sl], sq[sl], wq[sl]).mean()),
                "weak_accuracy": float(wq[sl].mean()),
            }
        )
    report = {
        "target": args.target,
        "fixed_threshold": fixed,
        "rule": rule["rule"],
        "controller_window": args.controller_window,
        "windows": windows,
        "overall": {
            "fixed_share": float(fixed_defer.mean()),
            "controller_share": float(ctl_defer.mean()),
            "fixed_max_abs_error": max(abs(w["fixed_share"] - args.target) for w in windows),
            "controller_max_abs_error": max(abs(w["controller_share"] - args.target) for w in windows),
        },
    }
    print(f"target {args.target}  fixed threshold {fixed:.4f} ({rule['rule']})")
    print(f"{'window':>7} {'phase':<20} {'fixed':>6} {'ctrl':>6} {'acc fixed':>9} {'acc ctrl':>8}")
    for w in windows:
        print(
            f"{w['start']:>7} {w['phase']:<20} {w['fixed_share']:>6.3f} {w['controller_share']:>6.3f} "
            f"{w['fixed_accuracy']:>9.3f} {w['controller_accuracy']:>8.3f}"
        )
    o = report["overall"]
    print(
        f"overall share: fixed {o['fixed_share']:.3f}, controller {o['controller_share']:.3f}; "
        f"worst window |share - target|: fixed {o['fixed_max_abs_error']:.3f}, controller {o['controller_max_abs_error']:.3f}"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x = [w["start"] + args.window / 2 for w in windows]
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(x, [w["fixed_share"] for w in windows], "o-", label="fixed threshold")
        ax.plot(x, [w["controller_share"] for w in windows], "s-", label="budget controller")
        ax.axhline(args.target, ls="--", c="grey", label=f"target {args.target}")
        for k in range(1, len(PHASES)):
            ax.axvline(k * args.per_phase, c="black", lw=0.5)
        ax.set_xlabel("request index (easy → mixed → hard)")
        ax.set_ylabel(f"share deferred per {args.window} requests")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
