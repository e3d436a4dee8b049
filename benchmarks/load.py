"""Load benchmark for a running cascade, with Serve's replica counts over time: open loop (Poisson arrivals) or
closed loop, over gRPC or the OpenAI HTTP front. The load is `cascade bench`'s (serving/ops/bench.py); this adds
the replica polling, the three-mode comparison and the report `cascade plan --measured` reads.

    python -m benchmarks.load --address 127.0.0.1:9000 --qps 20 --duration 30 --out results/load.json --plot results/load.png
    python -m benchmarks.load --address 127.0.0.1:9000 --concurrency 32 --duration 20 --compare --out results/load.json
    python -m benchmarks.load --address 127.0.0.1:9000 --steps 2:20,25:40,2:60 --out results/step.json   # qps:seconds,...
    python -m benchmarks.load --address http://127.0.0.1:8000 --stream --concurrency 8 --duration 20    # OpenAI SSE

Reports throughput, client latency p50/p90/p99, errors by status (gRPC code or HTTP status), deferral share,
answers per tier, router overhead (client latency minus the time inside the tiers, for requests the
weak tier answers) and each deployment's running replicas over time, polled from Serve
(`--ray-address`, default: the local Ray). `--compare` runs the cascade, weak-only and strong-only
(`force_tier`) one after the other with the same arrivals. Targets loopback only; every run is
bounded by --duration (or the steps) and stops by itself. Never asserts timings.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.common import ReplicaPoller, prompts
from serving.ops.bench import Load, run_once
from serving.ops.loadgen import CASCADE, arrivals, parse_steps, parse_target, step_arrivals


def run_mode(args, texts, force_tier: str, load: Load) -> dict:
    target = parse_target(args.address, stream=args.stream, api=args.api)
    with ReplicaPoller(args.ray_address, args.app) if not args.no_poll else _Null() as poller:
        out, samples = run_once(target, {force_tier or CASCADE: 1.0}, texts, load, progress=force_tier or CASCADE)
    out["forced_tier"] = force_tier
    out["replicas"] = getattr(poller, "samples", [])
    out["samples"] = samples
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def print_table(runs: dict) -> None:
    print(
        f"{'mode':<12} {'req':>6} {'rps':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'defer':>6} {'ovh p50':>8} {'ovh p99':>8}  errors"
    )
    for mode, r in runs.items():
        lat, ov = r["latency_ms"], r["router_overhead_ms"]
        print(
            f"{mode:<12} {r['requests']:>6} {r['throughput_rps']:>7.1f} {lat['p50']:>7.1f} {lat['p90']:>7.1f} "
            f"{lat['p99']:>7.1f} {r['deferral_share']:>6.3f} {ov['p50']:>8.2f} {ov['p99']:>8.2f}  {r['errors'] or '-'}"
        )
    for mode, r in runs.items():
        b = r["latency_by_answer_ms"]
        if b["weak"]["n"] and b["deferred"]["n"]:
            print(
                f"{mode}: weak-answered p50 {b['weak']['p50']:.1f} ms (n={b['weak']['n']}), deferred p50 "
                f"{b['deferred']['p50']:.1f} ms (n={b['deferred']['n']}) -> {r['deferred_over_weak_p50']:.2f}x"
            )


def plot(runs: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, r in runs.items():
        xs = np.sort([s["ms"] for s in r["samples"] if s["code"] == "OK"])
        if len(xs):
            axes[0].plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{mode} (p50 {r['latency_ms']['p50']:.0f} ms)")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("client latency (ms)")
    axes[0].set_ylabel("fraction of requests")
    axes[0].set_title("Latency CDF")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    for mode, r in runs.items():
        deps = sorted({k for s in r["replicas"] for k in s if k != "t"})
        for d in deps:
            axes[1].step(
                [s["t"] for s in r["replicas"]],
                [s.get(d, 0) for s in r["replicas"]],
                where="post",
                label=f"{mode}: {d}" if len(runs) > 1 else d,
            )
    axes[1].set_xlabel("seconds into the run")
    axes[1].set_ylabel("running replicas")
    axes[1].set_title(
        "Replicas per deployment" if any(r["replicas"] for r in runs.values()) else "(replica polling off)"
    )
    if any(r["replicas"] for r in runs.values()):
        axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default="127.0.0.1:9000", help="gRPC host:port, or http://host:port for OpenAI HTTP")
    ap.add_argument("--stream", action="store_true", help="GenerateStream / SSE (time to first text measured)")
    ap.add_argument("--api", choices=["chat", "completions"], default="chat", help="HTTP: the OpenAI endpoint")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--qps", type=float, help="open loop: Poisson arrivals at this rate")
    g.add_argument("--concurrency", type=int, help="closed loop: this many requests in flight")
    g.add_argument("--steps", help="open loop in steps, 'qps:seconds,qps:seconds,...'")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--data", help="JSONL with prompts (default: the arithmetic test split)")
    ap.add_argument("--compare", action="store_true", help="cascade, weak-only and strong-only with the same arrivals")
    ap.add_argument("--tier", default="", help="force_tier for a single run")
    ap.add_argument("--timeout", type=float, default=30.0, help="deadline per request (s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ray-address", help="Ray to poll replica counts from (default: the local one)")
    ap.add_argument("--app", default="cascade")
    ap.add_argument("--no-poll", action="store_true")
    ap.add_argument("--out", default="results/load.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    if args.steps:
        steps = parse_steps(args.steps)
        times, args.duration = step_arrivals(steps, args.seed), sum(s for _, s in steps)
    elif args.qps:
        times = arrivals(args.qps, args.duration, args.seed)
    else:
        times = None
    texts = prompts(args.data)
    modes = (
        {"cascade": "", "weak_only": "weak", "strong_only": "strong"}
        if args.compare
        else {args.tier or "cascade": args.tier}
    )
    load = Load(times, args.concurrency or 1, args.duration, timeout=args.timeout)
    runs = {mode: run_mode(args, texts, tier, load) for mode, tier in modes.items()}
    report = {
        "address": args.address,
        "qps": args.qps,
        "concurrency": args.concurrency,
        "steps": args.steps,
        "duration_s": args.duration,
        "runs": runs,
    }
    print_table(runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
