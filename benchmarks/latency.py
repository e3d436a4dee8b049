"""Latency of weak-only vs deferred answers through gRPC (closed loop, one request at a time).

    cascade serve &                                  # or any running cascade
    python benchmarks/latency.py --address 127.0.0.1:9000 --n 300 --out results/latency.json --plot results/latency.png

Sends test-split arithmetic questions (or --data JSONL with {"prompt", "reference"}), one at a
time, and groups the client-observed latency by what the cascade did: answered by the weak tier,
or deferred to the strong tier. Prints medians and p90 and the ratio deferred/weak; writes JSON
and a latency CDF. Never asserts timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from serving.client import CascadeClient, make_request
from serving.tasks.arithmetic import examples


def load_data(path: str | None, n: int) -> list[dict]:
    if path:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()][:n]
    return [{"prompt": e.prompt, "reference": e.reference} for e in examples(3, n)]


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default="127.0.0.1:9000")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--data")
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--out", default="results/latency.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    data = load_data(args.data, args.n)
    groups: dict[str, list[float]] = {"weak": [], "deferred": []}
    server_ms: dict[str, list[float]] = {"weak": [], "deferred": []}
    correct = 0
    with CascadeClient(args.address, timeout=120) as c:
        for ex in data[: args.warmup]:
            c.generate(make_request(ex["prompt"]))
        for ex in tqdm(data, desc="requests"):
            t0 = time.perf_counter()
            r = c.generate(make_request(ex["prompt"]))
            ms = (time.perf_counter() - t0) * 1e3
            key = "deferred" if r.deferred else "weak"
            groups[key].append(ms)
            server_ms[key].append(r.total_latency_ms)
            correct += r.text.strip() == ex["reference"]
    summary = {
        "n": len(data), "address": args.address, "cascade_accuracy": correct / len(data),
        "deferral_share": len(groups["deferred"]) / len(data),
        "latency_ms": {k: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90), "p99": pct(v, 99)} for k, v in groups.items()},
        "router_total_ms_p50": {k: pct(v, 50) for k, v in server_ms.items()},
    }
    w, d = summary["latency_ms"]["weak"]["p50"], summary["latency_ms"]["deferred"]["p50"]
    summary["deferred_over_weak_p50"] = d / w if w else float("nan")
    print(f"n={len(data)}  deferred {summary['deferral_share']:.3f}  cascade accuracy {summary['cascade_accuracy']:.3f}")
    print(f"{'answer':>10} {'n':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8}")
    for k, s in summary["latency_ms"].items():
        print(f"{k:>10} {s['n']:>5} {s['p50']:>8.1f} {s['p90']:>8.1f} {s['p99']:>8.1f}")
    print(f"median deferred / median weak-only: {summary['deferred_over_weak_p50']:.2f}x")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "samples_ms": groups}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for k, v in groups.items():
            if v:
                xs = np.sort(v)
                ax.plot(xs, np.arange(1, len(xs) + 1) / len(xs), label=f"{k} (n={len(v)}, p50 {statistics.median(v):.0f} ms)")
        ax.set_xlabel("client-observed latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.set_title("Cascade latency over gRPC: weak-only vs deferred")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
