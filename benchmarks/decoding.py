"""What per-request sampling costs the cascade, side by side in one run: greedy vs sampled decoding
(default temperature 0.8, seeded) on the shipped pair.

    python -m benchmarks.decoding --out results/decoding.json --plot results/decoding.png

(a) Quality: for each decoding, the weak and strong answers to the calibration split and the test split
    (offline, the tiers' own engines); the configured rule's threshold calibrated for --target-deferral on
    the calibration split with that decoding; on the test split: deferral share, cascade quality (exact
    match with the reference), weak-only and strong-only quality.
(b) Served: `cascade serve` (one replica per deployment), closed loop at --concurrency over gRPC, greedy and
    sampled alternating for --rounds: throughput and p50; the sampled/greedy ratio of the medians.
Loopback only; bounded by its sizes and durations. Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import one_replica, pyplot, write_json
from serving._proto.cascade.v1 import cascade_pb2 as pb
from serving.config import TOY_CONFIG, load_config, parse_config
from serving.core.decoding import Decoding
from serving.deferral import build_scorer
from serving.evaluation.data import SPLIT_SEEDS
from serving.evaluation.fit import score_run
from serving.evaluation.offline import run_offline
from serving.evaluation.thresholds import threshold_for_deferral
from serving.ops.loadgen import run_load, summarize
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples


def rows(split: str, n: int) -> list[dict]:
    return [{"prompt": e.prompt, "reference": e.reference} for e in examples(SPLIT_SEEDS[split], n)]


def quality(cfg, decoding: Decoding, n_cal: int, n_test: int, target: float) -> dict:
    d = cfg.deferral.resolved()
    scorer = build_scorer(d.rule, d.alpha, d.model)
    cal = run_offline(cfg, rows("calibration", n_cal), decoding=decoding)
    test = run_offline(cfg, rows("test", n_test), decoding=decoding)
    weak, strong = cfg.tier_names[0], cfg.tier_names[-1]
    threshold = threshold_for_deferral(score_run(scorer, cal[weak]), target)
    s = score_run(scorer, test[weak])
    defer = s < threshold
    q = np.where(defer, test[strong].quality, test[weak].quality)
    return {
        "threshold": float(threshold),
        "deferral_share": float(defer.mean()),
        "cascade_quality": float(q.mean()),
        "weak_quality": float(test[weak].quality.mean()),
        "strong_quality": float(test[strong].quality.mean()),
        "n_test": n_test,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--target-deferral", type=float, default=0.3)
    ap.add_argument("--n-calibration", type=int, default=500)
    ap.add_argument("--n-test", type=int, default=500)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="results/decoding.json")
    ap.add_argument("--plot", default="results/decoding.png")
    args = ap.parse_args()
    cfg = load_config(args.config or TOY_CONFIG)  # default: the arithmetic toy pair
    modes = {"greedy": Decoding(), f"T={args.temperature:g}": Decoding(temperature=args.temperature, seed=args.seed)}
    report = {"quality": {}, "served": {}}
    for name, dec in modes.items():
        report["quality"][name] = q = quality(cfg, dec, args.n_calibration, args.n_test, args.target_deferral)
        print(
            f"quality {name}: threshold {q['threshold']:.4f}, deferral {q['deferral_share']:.3f}, cascade "
            f"{q['cascade_quality']:.3f} (weak {q['weak_quality']:.3f}, strong {q['strong_quality']:.3f})",
            flush=True,
        )
    texts = [r["prompt"] for r in rows("test", 1000)]
    messages = {"greedy": None, f"T={args.temperature:g}": pb.Decoding(temperature=args.temperature, seed=args.seed)}
    pinned = parse_config(one_replica(cfg.model_dump(mode="json", exclude_none=True)))
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as tmp, cascade_server(pinned, Path(tmp)) as srv:
        for r in range(args.rounds):
            for name in list(modes) if r % 2 == 0 else list(modes)[::-1]:  # alternate which goes first
                res, el = asyncio.run(
                    run_load(
                        srv.address,
                        texts,
                        concurrency=args.concurrency,
                        duration=args.duration,
                        decoding=messages[name],
                    )
                )
                s = summarize(res, el)
                runs[name].append({k: s[k] for k in ("throughput_rps", "latency_ms", "errors", "deferral_share")})
                print(
                    f"round {r} {name}: {s['throughput_rps']:.1f} rps, p50 {s['latency_ms']['p50']:.1f} ms, "
                    f"deferral {s['deferral_share']:.3f}, errors {s['errors'] or '-'}",
                    flush=True,
                )
    for name, rs in runs.items():
        report["served"][name] = {
            "rps": statistics.median(x["throughput_rps"] for x in rs),
            "p50_ms": statistics.median(x["latency_ms"]["p50"] for x in rs),
            "runs": rs,
        }
    g, s = (report["served"][m] for m in modes)
    report["sampled_over_greedy"] = {"rps": s["rps"] / g["rps"], "p50": s["p50_ms"] / g["p50_ms"]}
    print(f"\n{'decoding':<10} {'defer':>6} {'cascade q':>9} {'weak q':>7} {'strong q':>8} {'c8 rps':>7} {'p50':>7}")
    for name in modes:
        q, v = report["quality"][name], report["served"][name]
        print(
            f"{name:<10} {q['deferral_share']:>6.3f} {q['cascade_quality']:>9.3f} {q['weak_quality']:>7.3f} "
            f"{q['strong_quality']:>8.3f} {v['rps']:>7.1f} {v['p50_ms']:>7.1f}"
        )
    print(
        f"sampled / greedy: throughput {report['sampled_over_greedy']['rps']:.3f}, p50 "
        f"{report['sampled_over_greedy']['p50']:.3f}"
    )
    write_json(report, args.out)
    if args.plot:
        plt = pyplot()
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        names = list(modes)
        ax[0].bar(names, [report["quality"][m]["cascade_quality"] for m in names])
        ax[0].set_title(f"cascade quality at {args.target_deferral:.0%} deferral")
        ax[1].bar(names, [report["served"][m]["rps"] for m in names])
        ax[1].set_title(f"served throughput, c={args.concurrency} (rps)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
