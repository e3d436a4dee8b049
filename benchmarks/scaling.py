"""The scale-out measurements, side by side in one run on this machine (loopback only):

    python benchmarks/scaling.py --out results/scaling.json --plot results/scaling.png

1. router overhead: closed loop at concurrency 1, weak-answered requests: client latency minus the
   time inside the tier, p50/p99, and where it goes (Serve's gRPC proxy, router code, handle hop);
2. cascade throughput at concurrency 32 vs the ideal 1 / (c_weak + d * c_strong), with c_tier the
   measured seconds per request of each tier alone (weak-only / strong-only runs) and d the
   cascade's deferral share;
3. autoscaling: open-loop steps light -> heavy -> light on the default (autoscaling) config; the
   time for each tier to reach its new replica count and the errors during the change.
Engines (continuous vs static batching) are compared by benchmarks/engine.py. Runs 1-2 pin every
deployment to one replica so the tiers' costs are comparable. Each part starts
`cascade serve` (serving.local) with its own embedded Ray and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")
sys.path.insert(0, str(Path(__file__).parent))

from load import ReplicaPoller, prompts, run_load, step_arrivals, summarize  # noqa: E402

from serving.config import load_config, parse_config  # noqa: E402
from serving.local import cascade_server  # noqa: E402


def config(fixed: bool = True):
    raw = load_config().model_dump(mode="json", exclude_none=True)
    for t in raw["tiers"]:
        if fixed:
            t["serve"].pop("autoscaling_config", None)
            t["serve"]["num_replicas"] = 1
    if fixed:
        raw["router"].pop("autoscaling_config", None)
        raw["router"]["num_replicas"] = 1
    return parse_config(raw)


def closed(addr: str, texts, concurrency: int, duration: float, tier: str = "") -> dict:
    results, elapsed = asyncio.run(run_load(addr, texts, concurrency=concurrency, duration=duration, force_tier=tier))
    return summarize(results, elapsed)


def reach_time(samples: list[dict], deployment: str, start: float, target_cmp) -> float | None:
    for s in samples:
        if s["t"] >= start and target_cmp(s.get(deployment, 0)):
            return round(s["t"] - start, 1)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per closed-loop run")
    ap.add_argument("--steps", default="2:30,20:60,2:90", help="qps:seconds for the autoscaling part")
    ap.add_argument("--out", default="results/scaling.json")
    ap.add_argument("--plot")
    args = ap.parse_args()
    texts = prompts(None)
    report: dict = {"machine": f"{os.cpu_count()} CPUs", "duration_s": args.duration}
    with tempfile.TemporaryDirectory() as tmp:
        with cascade_server(config(), Path(tmp) / "a") as srv:
            solo = closed(srv.address, texts, 1, args.duration, "weak")
            report["router_overhead"] = solo["router_overhead_ms"] | {"client_p50_ms": solo["latency_ms"]["p50"]}
            runs = {mode: closed(srv.address, texts, 32, args.duration, tier)
                    for mode, tier in (("cascade", ""), ("weak_only", "weak"), ("strong_only", "strong"))}
        w, s, c = (runs[m]["throughput_rps"] for m in ("weak_only", "strong_only", "cascade"))
        d = runs["cascade"]["deferral_share"]
        ideal = 1.0 / (1.0 / w + d / s)
        report["cascade_vs_ideal"] = {"cascade_rps": c, "deferral_share": d, "c_weak_s": 1 / w, "c_strong_s": 1 / s,
                                      "ideal_rps": ideal, "ratio": c / ideal}
        report["closed_loop_c32"] = runs
        steps = [tuple(map(float, p.split(":"))) for p in args.steps.split(",")]
        with cascade_server(config(fixed=False), Path(tmp) / "c") as srv:
            with ReplicaPoller(srv.ray_address, "cascade", interval=1.0) as poller:
                res, el = asyncio.run(run_load(srv.address, texts, times=step_arrivals(steps, 0), timeout=60))
        t_heavy, t_light = steps[0][1], steps[0][1] + steps[1][1]
        samples = poller.samples
        peak = {dep: max(s_.get(dep, 0) for s_ in samples) for dep in ("tier-weak", "tier-strong", "Router")}
        scale = {}
        for dep, n in peak.items():
            up = reach_time(samples, dep, t_heavy, lambda x, n=n: x >= n) if n > 1 else None
            # back to one replica: the first sample at 1 after both the step down and the peak
            after = max(t_light, t_heavy + up) if up is not None else t_light
            down = reach_time(samples, dep, after, lambda x: x <= 1) if n > 1 else None
            scale[dep] = {"peak_replicas": n, "s_to_peak_after_step_up": up,
                          "s_back_to_1_after_step_down": None if down is None else round(after + down - t_light, 1),
                          "changes": [{"t": s_["t"], "replicas": s_.get(dep, 0)} for i, s_ in enumerate(samples)
                                      if i == 0 or s_.get(dep, 0) != samples[i - 1].get(dep, 0)]}
        errs_during = {}
        for r in res:
            if r["code"] != "OK" and t_heavy <= r["t"]:
                errs_during[r["code"]] = errs_during.get(r["code"], 0) + 1
        report["autoscaling"] = {"steps": args.steps, "per_deployment": scale, "errors": errs_during,
                                 "summary": summarize(res, el) | {"replicas": samples}}
    print(f"router overhead (c=1, weak answers): p50 {report['router_overhead']['p50']:.1f} ms, "
          f"p99 {report['router_overhead']['p99']:.1f} ms  [proxy {report['router_overhead']['proxy_p50']:.1f}, "
          f"router code {report['router_overhead']['router_code_p50']:.2f}, handle hop {report['router_overhead']['handle_hop_p50']:.1f}]")
    cv = report["cascade_vs_ideal"]
    print(f"cascade (c=32): {cv['cascade_rps']:.1f} rps, d={cv['deferral_share']:.3f}, ideal {cv['ideal_rps']:.1f} rps "
          f"-> ratio {cv['ratio']:.2f}")
    for dep, v in report["autoscaling"]["per_deployment"].items():
        print(f"autoscaling {dep}: peak {v['peak_replicas']} replicas, {v['s_to_peak_after_step_up']} s to peak after the "
              f"step up, {v['s_back_to_1_after_step_down']} s back to 1 after the step down")
    print(f"errors during the steps: {report['autoscaling']['errors'] or 0}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for dep in ("tier-weak", "tier-strong", "Router"):
            ax.step([s_["t"] for s_ in samples], [s_.get(dep, 0) for s_ in samples], where="post", label=dep)
        for x in (t_heavy, t_light):
            ax.axvline(x, c="grey", ls="--", lw=0.8)
        ax.set_xlabel(f"seconds (steps {args.steps} qps:s)")
        ax.set_ylabel("running replicas")
        ax.set_title("Autoscaling under a load step")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
