"""The capacity planner against the real thing, in one run on this machine (loopback only):

    python -m benchmarks.plan --qps 20 --out results/plan.json --plot results/plan.png

1. probe: a one-replica cascade, closed loops at a few concurrencies (what `cascade plan` runs);
2. plan for --qps (replicas per tier, autoscaling targets; `cascade plan --qps Q --out plan.yaml`);
3. deploy the planned config (`cascade serve --config plan.yaml`) and send Poisson arrivals at --qps
   for --duration seconds (benchmarks/load.py's open loop);
4. per tier, predicted vs measured: utilisation (arrivals / (replicas x measured capacity)), requests in
   flight per replica (Little: total tier latency / time / replicas), mean and p99 tier latency as the
   router saw it, and their ratios.
Never asserts timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

from benchmarks.common import add_config_args, base_config, prompts, pyplot, use_config, write_json
from serving.config import parse_config, portable
from serving.ops.loadgen import arrivals, run_load, summarize
from serving.ops.local import cascade_server
from serving.ops.planner import curves_from_report, format_plan, plan, planned_config
from serving.ops.probe import probe
from serving.serve.autoscaling import ENGINE_AUTOSCALING

METRICS = ("utilisation", "in_flight_per_replica", "mean_ms", "p99_ms")


def running_replicas(ray_address: str) -> dict[str, int]:
    """Running replicas per deployment, from `cascade status` in a process of its own (a Ray driver in
    this process would share its interpreter with the load generator and skew its timings)."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "cascade"), "status", "--json", "--ray-address", ray_address],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return {name: d["replicas"].get("RUNNING", 0) for name, d in json.loads(out)["deployments"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qps", type=float, default=20.0)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load on the planned deployment")
    ap.add_argument("--p99-ms", type=float)
    ap.add_argument("--probe-concurrency", default="1,2,4,8,16")
    ap.add_argument("--probe-seconds", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="results/plan.json")
    ap.add_argument("--plot")
    add_config_args(ap)
    args = ap.parse_args()
    use_config(args.config)
    cfg = base_config()
    texts = prompts(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        measured = probe(
            cfg, Path(tmp) / "probe", [int(c) for c in args.probe_concurrency.split(",")], args.probe_seconds, texts
        )
        curves, shares = curves_from_report(measured, cfg.tier_names)
        p = plan(curves, args.qps, shares, p99_ms=args.p99_ms)
        print(format_plan(p))
        planned = parse_config(planned_config(portable(cfg), p, ENGINE_AUTOSCALING), origin="the plan")
        with cascade_server(planned, Path(tmp) / "planned") as srv:
            res, el = asyncio.run(run_load(srv.address, texts, times=arrivals(args.qps, args.duration, args.seed)))
            replicas = running_replicas(srv.ray_address)
    run = summarize(res, el) | {"replicas": replicas}
    rows = {}
    for t in p.tiers:
        s = run["tiers"].get(t.tier, {"n": 0, "in_flight": 0.0, "rate_rps": 0.0})
        n = replicas.get(f"tier-{t.tier}") or t.replicas
        got = {
            "utilisation": s["rate_rps"] / (n * t.capacity_rps),
            "in_flight_per_replica": s["in_flight"] / n,
            "mean_ms": s.get("mean_ms"),
            "p99_ms": s.get("p99_ms"),
        }
        want = {m: getattr(t, m) for m in METRICS}
        rows[t.tier] = {
            "planned_replicas": t.replicas,
            "running_replicas_at_the_end": n,
            "arrival_rps": {"predicted": t.arrival_rps, "measured": s["rate_rps"]},
            "predicted": want,
            "measured": got,
            "measured_over_predicted": {m: (got[m] / want[m]) if got[m] and want[m] else None for m in METRICS},
        }
    report = {
        "machine": f"{os.cpu_count()} CPUs, shared",
        "qps": args.qps,
        "duration_s": args.duration,
        "probe": measured,
        "plan": p.to_dict(),
        "targets": p.targets(),
        "tiers": rows,
        "load": {k: run[k] for k in ("requests", "ok", "throughput_rps", "latency_ms", "errors", "deferral_share")},
    }
    print(
        f"\nplanned deployment at {args.qps:g} req/s for {args.duration:g} s: {run['ok']}/{run['requests']} OK, "
        f"errors {run['errors'] or 0}, deferral {run['deferral_share']:.3f}, client p99 {run['latency_ms']['p99']:.1f} ms"
    )
    print(f"{'tier':<8} {'metric':<22} {'predicted':>10} {'measured':>10} {'meas/pred':>10}")
    for tier, r in rows.items():
        for m in METRICS:
            ratio = r["measured_over_predicted"][m]
            print(
                f"{tier:<8} {m:<22} {r['predicted'][m]:>10.3f} {r['measured'][m] or 0:>10.3f} "
                f"{'-' if ratio is None else f'{ratio:.2f}':>10}"
            )
    write_json(report, args.out)
    if args.plot:
        plt = pyplot()
        fig, axes = plt.subplots(1, len(METRICS), figsize=(13, 3.5))
        for ax, m in zip(axes, METRICS):
            xs = range(len(rows))
            ax.bar([x - 0.2 for x in xs], [r["predicted"][m] for r in rows.values()], 0.4, label="predicted")
            ax.bar([x + 0.2 for x in xs], [r["measured"][m] or 0 for r in rows.values()], 0.4, label="measured")
            ax.set_xticks(list(xs), list(rows))
            ax.set_title(m)
            ax.grid(alpha=0.3, axis="y")
        axes[0].legend()
        fig.suptitle(f"cascade plan at {args.qps:g} req/s: predicted vs measured per tier")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
