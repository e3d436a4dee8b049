"""gRPC load benchmark for the cascade: open loop (Poisson arrivals) or closed loop.

    python benchmarks/load.py --address 127.0.0.1:9000 --qps 20 --duration 30 --out results/load.json --plot results/load.png
    python benchmarks/load.py --address 127.0.0.1:9000 --concurrency 32 --duration 20 --compare --out results/load.json
    python benchmarks/load.py --address 127.0.0.1:9000 --steps 2:20,25:40,2:60 --out results/step.json   # qps:seconds,...

Reports throughput, client latency p50/p90/p99, errors by gRPC status code, deferral share,
answers per tier, router overhead (client latency minus the time inside the tiers, for requests the
weak tier answers) and each deployment's running replicas over time, polled from Serve
(`--ray-address`, default: the local Ray). `--compare` runs the cascade, weak-only and strong-only
(`force_tier`) one after the other with the same arrivals. Targets loopback only; every run is
bounded by --duration (or the steps) and stops by itself. Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Optional

os.environ.setdefault("RAY_AUTH_MODE", "token")  # present Ray's token when polling replicas (set before Ray loads)

import grpc  # noqa: E402
import numpy as np  # noqa: E402

from serving._proto.cascade.v1 import cascade_pb2 as pb  # noqa: E402
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc  # noqa: E402
from serving.evaluation.data import SPLIT_SEEDS, load_jsonl  # noqa: E402
from serving.ops.planner import tier_summary  # noqa: E402
from serving.ops.probe import one_replica  # noqa: E402,F401  (the benchmarks' one-replica configs)
from serving.tasks.arithmetic import examples  # noqa: E402


class ReplicaPoller:
    """Running replicas per deployment over time, from serve.status() (in a thread)."""

    def __init__(self, ray_address: Optional[str], app: str, interval: float = 1.0):
        self.samples: list[dict] = []
        self.app, self.interval, self.stop = app, interval, threading.Event()
        self.ok, self.connected = False, False
        try:
            import ray

            from serving.ops.local import find_local_ray

            address = ray_address or find_local_ray()
            if address is None:
                raise ConnectionError("no running Ray found on this machine")
            if not ray.is_initialized():
                ray.init(address=address, logging_level="ERROR", log_to_driver=False)
                self.connected = True
            self.ok = True
        except Exception as e:  # no Ray to ask: the load still runs
            print(f"replica polling off: {type(e).__name__}: {e}")
        self.t0 = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from ray import serve

        while not self.stop.is_set():
            try:
                app = serve.status().applications.get(self.app)
                counts = {name: d.replica_states.get("RUNNING", 0) for name, d in (app.deployments if app else {}).items()}
                self.samples.append({"t": round(time.monotonic() - self.t0, 2), **counts})
            except Exception:
                pass
            self.stop.wait(self.interval)

    def __enter__(self):
        self.t0 = time.monotonic()
        if self.ok:
            self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.ok:
            self.thread.join(timeout=10)
        if self.connected:  # before that Ray goes away: a driver left connected to a stopped Ray is killed
            import ray

            ray.shutdown()


def write_json(report: dict, out: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(report, indent=1))


def pyplot():
    """matplotlib's pyplot on the file-only backend (the bench extra installs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prompts(data: Optional[str], n: int = 2000) -> list[str]:
    if data:
        return [r["prompt"] for r in load_jsonl(data)]
    return [e.prompt for e in examples(SPLIT_SEEDS["test"], n)]


def arrivals(qps: float, duration: float, seed: int) -> list[float]:
    rng, t, out = random.Random(seed), 0.0, []
    while True:
        t += rng.expovariate(qps)
        if t >= duration:
            return out
        out.append(t)


def step_arrivals(steps: list[tuple[float, float]], seed: int) -> list[float]:
    out, start = [], 0.0
    for k, (qps, secs) in enumerate(steps):
        out += [start + t for t in arrivals(qps, secs, seed + k)]
        start += secs
    return out


async def _one(stub, prompt: str, force_tier: str, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        r = await stub.Generate(pb.GenerateRequest(prompt=prompt, force_tier=force_tier), timeout=timeout)
        ms = (time.perf_counter() - t0) * 1e3
        return {"code": "OK", "ms": ms, "tier": r.tier, "deferred": r.deferred,
                "tier_ms": sum(t.tier_ms for t in r.tiers), "router_ms": r.total_latency_ms,
                "hop_ms": sum(t.latency_ms - t.tier_ms for t in r.tiers),
                "tier_latency_ms": {t.tier: t.latency_ms for t in r.tiers},
                "tier_engine_ms": {t.tier: t.tier_ms for t in r.tiers}}
    except grpc.aio.AioRpcError as e:
        return {"code": e.code().name, "ms": (time.perf_counter() - t0) * 1e3}


async def run_load(address: str, texts: list[str], *, times: Optional[list[float]] = None, concurrency: int = 0,
                   duration: float = 10.0, force_tier: str = "", timeout: float = 30.0) -> tuple[list[dict], float]:
    """Open loop when ``times`` (arrival offsets, s) is given, else closed loop with ``concurrency``."""
    results: list[dict] = []
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)
        await stub.Generate(pb.GenerateRequest(prompt=texts[0], force_tier=force_tier), timeout=timeout)  # warm
        t0 = time.perf_counter()
        if times is not None:
            async def fire(i: int, at: float):
                await asyncio.sleep(max(0.0, at - (time.perf_counter() - t0)))
                results.append({"t": at, **await _one(stub, texts[i % len(texts)], force_tier, timeout)})

            await asyncio.gather(*(fire(i, at) for i, at in enumerate(times)))
        else:
            counter = iter(range(10**9))

            async def worker():
                while (now := time.perf_counter() - t0) < duration:
                    i = next(counter)
                    results.append({"t": now, **await _one(stub, texts[i % len(texts)], force_tier, timeout)})

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return results, elapsed


def summarize(results: list[dict], elapsed: float) -> dict:
    ok = [r for r in results if r["code"] == "OK"]
    lat = [r["ms"] for r in ok]
    weak_answered = [r for r in ok if not r["deferred"] and r["tier"] == "weak"]
    overhead = [r["ms"] - r["tier_ms"] for r in weak_answered]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    by_answer = {"weak": [r["ms"] for r in weak_answered], "deferred": [r["ms"] for r in ok if r["deferred"]]}
    return {
        "requests": len(results), "ok": len(ok), "elapsed_s": elapsed,
        "throughput_rps": len(ok) / elapsed if elapsed else 0.0,
        "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99)},
        "errors": dict(Counter(r["code"] for r in results if r["code"] != "OK")),
        "deferral_share": (sum(r["deferred"] for r in ok) / len(ok)) if ok else 0.0,
        "answers_by_tier": dict(Counter(r["tier"] for r in ok)),
        "router_overhead_ms": {"n": len(overhead), "p50": pct(overhead, 50), "p99": pct(overhead, 99),
                               # where it goes (weak-answered requests, p50): Serve's gRPC proxy, the
                               # router's own code, and the router -> tier handle call
                               "proxy_p50": pct([r["ms"] - r["router_ms"] for r in weak_answered], 50),
                               "router_code_p50": pct([r["router_ms"] - r["tier_ms"] - r["hop_ms"] for r in weak_answered], 50),
                               "handle_hop_p50": pct([r["hop_ms"] for r in weak_answered], 50)},
        "tier_ms": {"p50": pct([r["tier_ms"] for r in ok], 50)},
        # weak-only answers vs deferred ones (what a cascade costs when it defers)
        "latency_by_answer_ms": {k: {"n": len(v), "p50": pct(v, 50), "p90": pct(v, 90)} for k, v in by_answer.items()},
        "deferred_over_weak_p50": pct(by_answer["deferred"], 50) / pct(by_answer["weak"], 50) if by_answer["weak"] else float("nan"),
        # each tier as the router saw it: requests, mean in flight, latency quantiles (cascade plan --measured)
        "tiers": {t: tier_summary([r["tier_latency_ms"][t] for r in ok if t in r["tier_latency_ms"]], elapsed,
                                  [r["tier_engine_ms"][t] for r in ok if t in r["tier_engine_ms"]])
                  for t in sorted({t for r in ok for t in r["tier_latency_ms"]})},
    }


def run_mode(args, texts, force_tier: str, times) -> dict:
    with ReplicaPoller(args.ray_address if not args.no_poll else None, args.app) if not args.no_poll else _Null() as poller:
        results, elapsed = asyncio.run(run_load(args.address, texts, times=times, concurrency=args.concurrency,
                                                duration=args.duration, force_tier=force_tier, timeout=args.timeout))
    out = summarize(results, elapsed)
    out["forced_tier"] = force_tier
    out["replicas"] = getattr(poller, "samples", [])
    out["samples"] = [{"t": round(r["t"], 3), "ms": round(r["ms"], 2), "code": r["code"]} for r in results]
    return out


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def print_table(runs: dict) -> None:
    print(f"{'mode':<12} {'req':>6} {'rps':>7} {'p50':>7} {'p90':>7} {'p99':>7} {'defer':>6} {'ovh p50':>8} {'ovh p99':>8}  errors")
    for mode, r in runs.items():
        lat, ov = r["latency_ms"], r["router_overhead_ms"]
        print(f"{mode:<12} {r['requests']:>6} {r['throughput_rps']:>7.1f} {lat['p50']:>7.1f} {lat['p90']:>7.1f} "
              f"{lat['p99']:>7.1f} {r['deferral_share']:>6.3f} {ov['p50']:>8.2f} {ov['p99']:>8.2f}  {r['errors'] or '-'}")
    for mode, r in runs.items():
        b = r["latency_by_answer_ms"]
        if b["weak"]["n"] and b["deferred"]["n"]:
            print(f"{mode}: weak-answered p50 {b['weak']['p50']:.1f} ms (n={b['weak']['n']}), deferred p50 "
                  f"{b['deferred']['p50']:.1f} ms (n={b['deferred']['n']}) -> {r['deferred_over_weak_p50']:.2f}x")


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
            axes[1].step([s["t"] for s in r["replicas"]], [s.get(d, 0) for s in r["replicas"]], where="post",
                         label=f"{mode}: {d}" if len(runs) > 1 else d)
    axes[1].set_xlabel("seconds into the run")
    axes[1].set_ylabel("running replicas")
    axes[1].set_title("Replicas per deployment" if any(r["replicas"] for r in runs.values()) else "(replica polling off)")
    if any(r["replicas"] for r in runs.values()):
        axes[1].legend(fontsize=7)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_steps(text: str) -> list[tuple[float, float]]:
    return [(float(q), float(s)) for q, s in (part.split(":") for part in text.split(","))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--address", default="127.0.0.1:9000")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--qps", type=float, help="open loop: Poisson arrivals at this rate")
    g.add_argument("--concurrency", type=int, help="closed loop: this many requests in flight")
    g.add_argument("--steps", help="open loop in steps, 'qps:seconds,qps:seconds,...'")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--data", help="JSONL with prompts (default: the arithmetic test split)")
    ap.add_argument("--compare", action="store_true", help="cascade, weak-only and strong-only with the same arrivals")
    ap.add_argument("--tier", default="", help="force_tier for a single run")
    ap.add_argument("--timeout", type=float, default=30.0, help="gRPC deadline per request (s)")
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
    modes = {"cascade": "", "weak_only": "weak", "strong_only": "strong"} if args.compare else {args.tier or "cascade": args.tier}
    runs = {mode: run_mode(args, texts, tier, times) for mode, tier in modes.items()}
    report = {"address": args.address, "qps": args.qps, "concurrency": args.concurrency, "steps": args.steps,
              "duration_s": args.duration, "runs": runs}
    print_table(runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
