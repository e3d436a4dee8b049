"""Overload benchmark: closed-loop callers well past capacity, with and without admission control.

    python -m benchmarks.overload --out results/overload.json --plot results/overload.png

Starts `cascade serve` on loopback once per configuration (one replica per deployment): with the
router's admission limit (`limits.max_inflight`, default 6 here), with it effectively off (10000;
Serve's own queue bounds still apply), and optionally ("proxy refuses") with the limit moved into
Serve's proxy (router `max_ongoing_requests` = the limit, `max_queued_requests: 1`). For each number of callers it runs a bounded closed loop
(every caller honours the `retry-after-ms` hint after a RESOURCE_EXHAUSTED) and reports offered and
admitted request rates, admitted latency p50/p99 and the median/p90 time to a refusal. Never asserts
timings; the two configurations are measured side by side in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from serving.config import TOY_CONFIG, load_config
from serving.ops.loadgen import run_load
from serving.ops.local import cascade_server
from serving.tasks.arithmetic import examples


def summarize(results: list[dict], callers: int, elapsed: float) -> dict:
    ok = [r["ms"] for r in results if r["code"] == "OK"]
    refused = [r["ms"] for r in results if r["code"] != "OK"]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None
    return {
        "callers": callers,
        "seconds": elapsed,
        "codes": dict(Counter(r["code"] for r in results)),
        "offered_rps": len(results) / elapsed,
        "admitted_rps": len(ok) / elapsed,
        "admitted_ms": {"p50": pct(ok, 50), "p99": pct(ok, 99)},
        "refused_ms": {"p50": pct(refused, 50), "p90": pct(refused, 90)},
    }


def step(address: str, prompts: list[str], callers: int, seconds: float, deadline: float) -> dict:
    t0 = time.monotonic()
    results, _ = asyncio.run(
        run_load(
            address, prompts, concurrency=callers, duration=seconds, timeout=deadline, retry_after=True, warm=False
        )
    )
    return summarize(results, callers, time.monotonic() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--callers", default="4,16,48,96", help="comma-separated numbers of concurrent callers")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    ap.add_argument("--max-inflight", type=int, default=6, help="the router's admission limit when on")
    ap.add_argument("--deadline", type=float, default=30.0, help="each call's gRPC deadline (s)")
    ap.add_argument(
        "--configs",
        default="admission on,admission off",
        help="comma-separated: 'admission on', 'admission off', 'proxy refuses'",
    )
    ap.add_argument("--out", default="results/overload.json")
    ap.add_argument("--plot", default="results/overload.png")
    args = ap.parse_args()
    prompts = [e.prompt for e in examples(3, 500)]
    callers = [int(c) for c in args.callers.split(",")]
    runs: dict[str, list[dict]] = {}
    configs = {  # label: (router admission limit, router max_ongoing_requests, router max_queued_requests)
        "admission on": (args.max_inflight, 256, 64),
        "admission off": (10_000, 256, 64),
        # refuse in Serve's proxy instead: the router takes max_inflight at once, the proxy queues one
        "proxy refuses": (10_000, args.max_inflight, 1),
    }
    for label in args.configs.split(","):
        limit, ongoing, queued = configs[label]
        cfg = load_config(TOY_CONFIG)
        cfg.limits.max_inflight = limit
        cfg.router.max_ongoing_requests, cfg.router.max_queued_requests = ongoing, queued
        for opts in [cfg.router] + [t.serve for t in cfg.tiers]:
            opts.autoscaling_config, opts.num_replicas = None, 1
        with tempfile.TemporaryDirectory() as tmp, cascade_server(cfg, Path(tmp)) as server:
            runs[label] = [step(server.address, prompts, n, args.seconds, args.deadline) for n in callers]
    print(
        f"{'config':<14} {'callers':>7} {'offered/s':>9} {'admitted/s':>10} {'ok p50':>8} {'ok p99':>8} "
        f"{'refused p50':>11} {'codes'}"
    )
    fmt = lambda x: "-" if x is None else f"{x:.0f}"
    for label, steps in runs.items():
        for r in steps:
            print(
                f"{label:<14} {r['callers']:>7} {r['offered_rps']:>9.1f} {r['admitted_rps']:>10.1f} "
                f"{fmt(r['admitted_ms']['p50']):>8} {fmt(r['admitted_ms']['p99']):>8} "
                f"{fmt(r['refused_ms']['p50']):>11} {r['codes']}"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"max_inflight": args.max_inflight, "runs": runs}, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for label, steps in runs.items():
        xs = [r["callers"] for r in steps]
        a.plot(xs, [r["admitted_ms"]["p99"] for r in steps], marker="o", label=f"{label}: admitted p99")
        a.plot(xs, [r["admitted_ms"]["p50"] for r in steps], marker=".", ls="--", label=f"{label}: admitted p50")
        if any(r["refused_ms"]["p50"] for r in steps):
            a.plot(xs, [r["refused_ms"]["p50"] or np.nan for r in steps], marker="x", label=f"{label}: refusal p50")
        b.plot(xs, [r["admitted_rps"] for r in steps], marker="o", label=f"{label}: admitted/s")
        b.plot(xs, [r["offered_rps"] for r in steps], ls=":", label=f"{label}: offered/s")
    a.set(xlabel="concurrent callers", ylabel="ms", yscale="log", title="latency")
    b.set(xlabel="concurrent callers", ylabel="requests / s", title="throughput")
    a.legend(fontsize=7)
    b.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.plot, dpi=120)
    print(f"wrote {args.out} and {args.plot}")


if __name__ == "__main__":
    main()
