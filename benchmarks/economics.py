"""Cascade economics under load: cost receipts, and load-aware deferral off vs on, side by side.

    python -m benchmarks.economics --out results/economics.json --plot results/economics.png

Starts `cascade serve` on loopback once per configuration (every deployment one replica; the strong
tier's `timeout_s` short, so an overloaded strong tier shows as timeouts / degraded answers), prices the
tiers with `tiers[].cost` (default: each tier's parameters in millions per token, prompt and completion
alike: compute ∝ parameters x tokens), and runs the same three phases against each:

  calm     held-out questions (the arithmetic task's test split), a few closed-loop callers;
  burst    hard questions only (4- and 5-digit operands), many callers: the strong tier saturates;
  recover  held-out questions again, a few callers.

`load-aware off` is the default config; `load-aware on` adds `deferral.load_aware` (watermarks on the
router's in-flight calls at the strong tier, a floor, a ramp). Per phase and configuration it reports
answered requests, p50/p99 latency, errors by status code, degraded answers (strong timed out or failed:
the weak text), the share deferred and kept for load (`load_shed`), exact-match quality against the
references, and the receipts: their total vs the strong-only counterfactual (ratio). It checks that the
receipts add up to the Prometheus cost counters (`ray_cascade_cost_total`, `..._strong_only_total`,
`ray_cascade_load_shed_total`) of that server. Plots the deferral share, the threshold in force and the
latency over time. Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import re
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from benchmarks.common import pyplot, write_json
from serving._proto.cascade.v1 import cascade_pb2_grpc as pb_grpc
from serving.config import TOY_CONFIG, Cost, LoadAware, load_config
from serving.evaluation.data import SPLIT_SEEDS
from serving.ops.client import make_request
from serving.ops.local import cascade_server, wait_for
from serving.tasks.arithmetic import examples

PARAMS_M = {"weak": 0.138, "medium": 0.454, "strong": 1.064}  # serving/default_models/README.md
COUNTERS = ("ray_cascade_cost_total", "ray_cascade_cost_strong_only_total", "ray_cascade_load_shed_total")


async def phase(
    address: str, name: str, questions: list, callers: int, seconds: float, deadline: float, t_start: float
) -> list[dict]:
    """Closed loop: ``callers`` callers cycle through ``questions`` for ``seconds``."""
    out: list[dict] = []
    stop = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(address) as ch:
        stub = pb_grpc.CascadeStub(ch)

        async def caller(k: int):
            while time.monotonic() < stop:
                q = questions[k % len(questions)]
                k += callers
                t0 = time.perf_counter()
                row = {"phase": name, "t": time.monotonic() - t_start}
                try:
                    r = await stub.Generate(make_request(q.prompt), timeout=deadline)
                    row.update(
                        code="OK",
                        tier=r.tier,
                        deferred=r.deferred,
                        degraded=r.degraded,
                        timeout="timed out" in r.degraded_reason,
                        overloaded="overloaded" in r.degraded_reason,
                        load_shed=r.load_shed,
                        threshold=r.threshold,
                        correct=r.text.strip() == q.reference,
                        cost=r.receipt.total,
                        strong_only=r.receipt.strong_only,
                        estimated=r.receipt.strong_only_estimated,
                    )
                except grpc.aio.AioRpcError as e:
                    row.update(code=e.code().name)
                row["ms"] = (time.perf_counter() - t0) * 1e3
                out.append(row)

        await asyncio.gather(*(caller(i) for i in range(callers)))
    return out


def scrape(url: str) -> dict[str, float]:
    out = dict.fromkeys(COUNTERS, 0.0)
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        m = re.match(r"(\w+)\{.*\} (\S+)$", line)
        if m and m.group(1) in out:
            out[m.group(1)] += float(m.group(2))
    return out


def summarize(rows: list[dict]) -> dict:
    ok = [r for r in rows if r["code"] == "OK"]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else None
    share = lambda key: sum(r[key] for r in ok) / len(ok) if ok else None
    cost, strong = sum(r["cost"] for r in ok), sum(r["strong_only"] for r in ok)
    return {
        "requests": len(rows),
        "ok": len(ok),
        "codes": dict(Counter(r["code"] for r in rows)),
        "latency_ms": {"p50": pct([r["ms"] for r in ok], 50), "p99": pct([r["ms"] for r in ok], 99)},
        "deferred": share("deferred"),
        "load_shed": share("load_shed"),
        "degraded": sum(r["degraded"] for r in ok),
        "strong_timeouts": sum(r["timeout"] for r in ok),
        "strong_overloaded": sum(r["overloaded"] for r in ok),
        "quality": share("correct"),
        "cost": cost,
        "strong_only_cost": strong,
        "strong_only_over_cost": strong / cost if cost else None,
        "strong_only_estimated": share("estimated"),
    }


def run_config(cfg, args, phases) -> dict:
    with tempfile.TemporaryDirectory() as tmp, cascade_server(cfg, Path(tmp)) as server:
        t0 = time.monotonic()
        rows = asyncio.run(phase(server.address, "warmup", phases[0][1][:4], 1, 2.0, args.deadline, t0))
        t0 = time.monotonic()
        for name, questions, callers, seconds in phases:
            rows += asyncio.run(phase(server.address, name, questions, callers, seconds, args.deadline, t0))
        ok = [r for r in rows if r["code"] == "OK"]
        want = {
            COUNTERS[0]: sum(r["cost"] for r in ok),
            COUNTERS[1]: sum(r["strong_only"] for r in ok),
            COUNTERS[2]: sum(r["load_shed"] for r in ok),
        }
        got = {}
        close = lambda a, b: math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
        try:
            wait_for(
                lambda: (
                    (got.update(scrape(server.metrics_url)) or True) and all(close(got[k], v) for k, v in want.items())
                ),
                timeout=60,
                interval=2,
            )
        except TimeoutError:
            pass  # reported as a mismatch below
    timed = [r for r in rows if r["phase"] != "warmup"]
    return {
        "phases": {name: summarize([r for r in timed if r["phase"] == name]) for name, *_ in phases},
        "receipts_vs_prometheus": {
            "receipts": want,
            "prometheus": got,
            "match": all(close(got.get(k, math.nan), v) for k, v in want.items()),
        },
        "samples": timed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calm-callers", type=int, default=2)
    ap.add_argument("--calm-seconds", type=float, default=20.0)
    ap.add_argument("--burst-callers", type=int, default=48)
    ap.add_argument("--burst-seconds", type=float, default=20.0)
    ap.add_argument("--recover-seconds", type=float, default=15.0)
    ap.add_argument("--strong-timeout", type=float, default=2.0, help="the strong tier's timeout_s (s)")
    ap.add_argument("--high-watermark", type=int, default=12, help="load_aware.high_watermark (strong in-flight)")
    ap.add_argument("--low-watermark", type=int, default=6)
    ap.add_argument("--floor", type=float, default=-3.0, help="load_aware.floor (chow_quantile score scale)")
    ap.add_argument("--ramp-s", type=float, default=0.0)
    ap.add_argument("--deadline", type=float, default=30.0, help="each call's gRPC deadline (s)")
    ap.add_argument("--configs", default="load-aware off,load-aware on")
    ap.add_argument("--out", default="results/economics.json")
    ap.add_argument("--plot", default="results/economics.png")
    args = ap.parse_args()
    held_out = list(examples(SPLIT_SEEDS["test"], 1000))
    hard = list(examples(SPLIT_SEEDS["test"] + 100, 1000, min_digits=4))
    phases = [
        ("calm", held_out, args.calm_callers, args.calm_seconds),
        ("burst", hard, args.burst_callers, args.burst_seconds),
        ("recover", held_out[500:], args.calm_callers, args.recover_seconds),
    ]
    runs = {}
    for label in args.configs.split(","):
        cfg = load_config(TOY_CONFIG)
        for t in cfg.tiers:
            t.cost = Cost(per_prompt_token=PARAMS_M[t.name], per_completion_token=PARAMS_M[t.name])
        cfg.tier("strong").timeout_s = args.strong_timeout
        for opts in [cfg.router] + [t.serve for t in cfg.tiers]:
            opts.autoscaling_config, opts.num_replicas = None, 1
        if label == "load-aware on":
            cfg.deferral.load_aware = LoadAware(
                high_watermark=args.high_watermark,
                low_watermark=args.low_watermark,
                floor=args.floor,
                ramp_s=args.ramp_s,
            )
        runs[label] = run_config(cfg, args, phases)
    print(
        f"{'config':<14} {'phase':<8} {'ok':>5} {'p50 ms':>7} {'p99 ms':>7} {'deferred':>8} {'shed':>6} "
        f"{'degraded':>8} {'timeouts':>8} {'queue full':>10} {'quality':>7} {'cost':>9} {'strong-only':>11} {'ratio':>6} codes"
    )
    f = lambda x, p=0: "-" if x is None else f"{x:.{p}f}"
    for label, run in runs.items():
        for name, s in run["phases"].items():
            print(
                f"{label:<14} {name:<8} {s['ok']:>5} {f(s['latency_ms']['p50']):>7} {f(s['latency_ms']['p99']):>7} "
                f"{f(s['deferred'], 3):>8} {f(s['load_shed'], 3):>6} {s['degraded']:>8} {s['strong_timeouts']:>8} {s['strong_overloaded']:>10} "
                f"{f(s['quality'], 3):>7} {f(s['cost'], 1):>9} {f(s['strong_only_cost'], 1):>11} "
                f"{f(s['strong_only_over_cost'], 2):>6} {s['codes']}"
            )
    for label, run in runs.items():
        m = run["receipts_vs_prometheus"]
        print(
            f"{label}: receipts {m['receipts']} vs Prometheus {m['prometheus']}: "
            f"{'equal' if m['match'] else 'MISMATCH'}"
        )
    write_json({"args": vars(args), "costs_per_token": PARAMS_M, "runs": runs}, args.out)
    plot(runs, phases, args.plot)
    print(f"wrote {args.out} and {args.plot}")


def plot(runs: dict, phases: list, path: str) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    edges, t = [], 0.0
    for name, _, _, seconds in phases:
        edges.append((t, t + seconds, name))
        t += seconds
    for label, run in runs.items():
        ok = [r for r in run["samples"] if r["code"] == "OK"]
        bins = np.arange(0, t + 1, 1.0)
        idx = np.digitize([r["t"] for r in ok], bins)
        share = [np.mean([r["deferred"] for r, i in zip(ok, idx) if i == b] or [np.nan]) for b in range(1, len(bins))]
        thr = [np.mean([r["threshold"] for r, i in zip(ok, idx) if i == b] or [np.nan]) for b in range(1, len(bins))]
        p99 = [np.percentile([r["ms"] for r, i in zip(ok, idx) if i == b] or [np.nan], 99) for b in range(1, len(bins))]
        axes[0].plot(bins[:-1], share, label=label)
        axes[1].plot(bins[:-1], thr, label=label)
        axes[2].plot(bins[:-1], p99, label=label)
    for ax, title, ylabel in zip(
        axes,
        ["deferral share (1 s bins)", "threshold in force (mean, 1 s bins)", "p99 latency (1 s bins)"],
        ["share deferred", "threshold", "ms"],
    ):
        for a, b, name in edges:
            ax.axvspan(a, b, alpha=0.08 if name == "burst" else 0.0, color="red")
            ax.text((a + b) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=8)
        ax.set(xlabel="seconds into the run", ylabel=ylabel)
        ax.set_title(title, pad=14)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
