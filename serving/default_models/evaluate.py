"""Evaluate the shipped pair on held-out arithmetic questions and place the default threshold.

    python -m serving.default_models.evaluate [--n 500] [--json OUT]

Runs both tiers in-process through the server's backend (``HFBackend``, batched, greedy), then:
weak / strong exact match on the test split; the deferral share and cascade accuracy at the
config's threshold, and a sweep of thresholds. The default threshold was read off the sweep on the
calibration split (``--split calibration``): the least deferral with cascade accuracy >= 98 %.
Splits: seed 1 = validation (training's early stop), 2 = calibration, 3 = test.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from tqdm import tqdm

from serving.config import load_config
from serving.deferral import make_rule
from serving.models import GenerationRequest, HFBackend
from serving.tasks.arithmetic import examples

SPLITS = {"calibration": 2, "test": 3}
SWEEP = [-2.0, -1.0, -0.7, -0.5, -0.3, -0.2, -0.1]


def run_tier(backend: HFBackend, exs, batch: int = 64, desc: str = ""):
    gens = []
    for i in tqdm(range(0, len(exs), batch), desc=desc, leave=False):
        gens += backend.generate([GenerationRequest(prompt=e.prompt) for e in exs[i : i + batch]])
    return gens


def evaluate(cfg, seed: int, n: int) -> dict:
    exs = list(examples(seed, n))
    score = make_rule(cfg.deferral.rule, cfg.deferral.alpha)
    out = {}
    for tier in cfg.tiers:
        b = HFBackend(tier.model, tier.generation)
        t0 = time.perf_counter()
        gens = run_tier(b, exs, desc=tier.name)
        secs = time.perf_counter() - t0
        ntok = sum(g.completion_tokens for g in gens)
        out[tier.name] = {
            "params": b.params,
            "correct": np.array([g.text.strip() == e.reference for g, e in zip(gens, exs)]),
            "scores": np.array([score(g.logprobs) for g in gens]),
            "ms_per_token_batched": 1e3 * secs / max(ntok, 1),
        }
    return out


def cascade(weak_ok, strong_ok, scores, threshold):
    defer = scores < threshold
    return float(defer.mean()), float(np.where(defer, strong_ok, weak_ok).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--split", choices=sorted(SPLITS), default="test")
    ap.add_argument("--json")
    args = ap.parse_args()
    cfg = load_config(args.config)
    weak, strong = (t.name for t in cfg.tiers[:2])
    seed = SPLITS[args.split]
    res = evaluate(cfg, seed, args.n)
    w, s, sc = res[weak]["correct"], res[strong]["correct"], res[weak]["scores"]
    share, acc = cascade(w, s, sc, cfg.deferral.threshold)
    report = {
        "rule": cfg.deferral.rule, "alpha": cfg.deferral.alpha, "threshold": cfg.deferral.threshold,
        "split": args.split, "split_seed": seed, "n": args.n,
        "weak_accuracy": float(w.mean()), "strong_accuracy": float(s.mean()),
        "deferral_share": share, "cascade_accuracy": acc, "oracle_deferral_share": float((~w).mean()),
        "sweep": [dict(zip(("threshold", "deferral_share", "cascade_accuracy"), (t, *cascade(w, s, sc, t)))) for t in SWEEP],
        "params": {weak: res[weak]["params"], strong: res[strong]["params"]},
        "ms_per_token_batched": {weak: res[weak]["ms_per_token_batched"], strong: res[strong]["ms_per_token_batched"]},
    }
    print(f"{args.split} split (seed {seed}, n={args.n}): weak {report['weak_accuracy']:.3f}  "
          f"strong {report['strong_accuracy']:.3f}  oracle defers {report['oracle_deferral_share']:.3f}")
    print(f"{'threshold':>10} {'deferred':>9} {'cascade':>8}")
    for row in report["sweep"] + [{"threshold": cfg.deferral.threshold, "deferral_share": share, "cascade_accuracy": acc}]:
        print(f"{row['threshold']:>10.2f} {row['deferral_share']:>9.3f} {row['cascade_accuracy']:>8.3f}")
    print(f"(last row: the config's {cfg.deferral.rule} threshold)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
