"""The scale-out measurements, side by side in one run on this machine (loopback only):

    python -m benchmarks.scaling --out results/scaling.json --plot results/scaling.png

1. router overhead: closed loop at concurrency 1, weak-answered requests: client latency minus the
   time inside the tier, p50/p99, and where it goes (Serve's gRPC proxy, router code, handle hop);
2. cascade throughput at concurrency 32 vs the ideal 1 / (c_weak + d * c_strong), with c_tier the
   measured seconds per request of each tier alone (weak-only / strong-only runs) and d the
   cascade's deferral share;
3. autoscaling: open-loop steps light -> heavy -> light, side by side: "serve_default" (Serve's own
   policy and windows: 30 s look-back, 10 s metrics interval, upscale 5 s / downscale 30 s — what the
   tiers had before) and "engine" (the shipped config: serving/serve/autoscaling.py's EngineLoad on the
   engines' running + waiting requests and KV-cache use, 1 s metrics, 5 s look-back, upscale 2 s /
   downscale 20 s). Both use the same replica bounds; the weak tier's target is --weak-target (one
   replica here holds ~0.4 requests at 20 qps, so the shipped target of 8 would never scale it), and
   for the engine policy --engine-weak-target: the same load in its unit (requests inside the engines,
   ~0.7 of those Serve counts at a replica here; `cascade plan` prints targets in that unit). Reported: the time for each tier to reach its peak replica count after the step
   up, back to one after the step down, and the errors during the steps.
Engines (continuous vs static batching) are compared by benchmarks/engine.py. Runs 1-2 pin every
deployment to one replica so the tiers' costs are comparable. Each part starts
`cascade serve` (serving.ops.local) with its own embedded Ray and stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import multiprocessing
import os
import tempfile
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")

from benchmarks.common import ReplicaPoller, add_config_args, base_config, one_replica, prompts, use_config
from serving.config import parse_config
from serving.ops.loadgen import run_load, step_arrivals, summarize
from serving.ops.local import cascade_server


def step_config(policy: str, weak_target: float):
    """The default config with autoscaling; ``serve_default``: Serve's own policy and windows instead
    of the engine policy, with the delays the tiers had before (upscale 5 s, downscale 30 s)."""
    raw = base_config().model_dump(mode="json", exclude_unset=True)
    for t in raw["tiers"]:
        a = t["serve"]["autoscaling_config"]
        if policy == "serve_default":
            t["serve"]["autoscaling_config"] = {
                k: a[k] for k in ("min_replicas", "initial_replicas", "max_replicas", "target_ongoing_requests")
            } | {"upscale_delay_s": 5, "downscale_delay_s": 30}
    if weak_target is not None:  # else the config's own (shipped) target
        raw["tiers"][0]["serve"]["autoscaling_config"]["target_ongoing_requests"] = weak_target
    return parse_config(raw)


def step_run(policy: str, weak_target: float, steps, workdir: Path, config=None, data=None) -> dict:
    """One step run in a process of its own (a driver's Serve client outlives its Ray, so a second
    cluster in the same process would be polled through the first one's stale client)."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_step_run, policy, weak_target, steps, workdir, config, data).result()


def _step_run(policy: str, weak_target: float, steps, workdir: Path, config=None, data=None) -> dict:
    use_config(config)  # a spawned process: the parent's --config does not carry over
    texts = prompts(data)
    with cascade_server(step_config(policy, weak_target), workdir) as srv:
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
        scale[dep] = {
            "peak_replicas": n,
            "s_to_peak_after_step_up": up,
            "s_back_to_1_after_step_down": None if down is None else round(after + down - t_light, 1),
            "changes": [
                {"t": s_["t"], "replicas": s_.get(dep, 0)}
                for i, s_ in enumerate(samples)
                if i == 0 or s_.get(dep, 0) != samples[i - 1].get(dep, 0)
            ],
        }
    errs = {}
    for r in res:
        if r["code"] != "OK" and t_heavy <= r["t"]:
            errs[r["code"]] = errs.get(r["code"], 0) + 1
    summary = summarize(res, el)
    return {
        "per_deployment": scale,
        "errors": errs,
        "samples": samples,
        "summary": {k: summary[k] for k in ("requests", "ok", "latency_ms", "errors", "deferral_share")},
    }


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
    ap.add_argument("--steps", default="2:30,20:90,2:120", help="qps:seconds for the autoscaling part")
    ap.add_argument(
        "--weak-target",
        type=float,
        help="the weak tier's target_ongoing_requests in the autoscaling part (both policies; default: the "
        "config's own; the shipped pair needed 0.15 to scale at all on this box)",
    )
    ap.add_argument(
        "--engine-weak-target",
        type=float,
        help="the engine policy's weak target, in its unit: requests inside the engines, a share of those "
        "Serve counts at the replica (cascade plan measures it: ~0.7 here); default --weak-target",
    )
    ap.add_argument("--parts", default="overhead,autoscaling", help="which parts to run (overhead = parts 1-2)")
    ap.add_argument("--out", default="results/scaling.json")
    ap.add_argument("--plot")
    add_config_args(ap)
    args = ap.parse_args()
    use_config(args.config)
    parts = set(args.parts.split(","))
    texts = prompts(args.data)
    report: dict = {"machine": f"{os.cpu_count()} CPUs", "duration_s": args.duration}
    with tempfile.TemporaryDirectory() as tmp:
        if "overhead" in parts:
            with cascade_server(
                parse_config(one_replica(base_config().model_dump(mode="json", exclude_none=True))), Path(tmp) / "a"
            ) as srv:
                solo = closed(srv.address, texts, 1, args.duration, "weak")
                report["router_overhead"] = solo["router_overhead_ms"] | {"client_p50_ms": solo["latency_ms"]["p50"]}
                runs = {
                    mode: closed(srv.address, texts, 32, args.duration, tier)
                    for mode, tier in (("cascade", ""), ("weak_only", "weak"), ("strong_only", "strong"))
                }
            w, s, c = (runs[m]["throughput_rps"] for m in ("weak_only", "strong_only", "cascade"))
            d = runs["cascade"]["deferral_share"]
            ideal = 1.0 / (1.0 / w + d / s)
            report["cascade_vs_ideal"] = {
                "cascade_rps": c,
                "deferral_share": d,
                "c_weak_s": 1 / w,
                "c_strong_s": 1 / s,
                "ideal_rps": ideal,
                "ratio": c / ideal,
            }
            report["closed_loop_c32"] = runs
        if "autoscaling" in parts:
            steps = [tuple(map(float, p.split(":"))) for p in args.steps.split(",")]
            report["autoscaling"] = {
                "steps": args.steps,
                "weak_target": args.weak_target,
                "engine_weak_target": args.engine_weak_target or args.weak_target,
                "runs": {
                    policy: step_run(policy, target, steps, Path(tmp) / policy, args.config, args.data)
                    for policy, target in (
                        ("serve_default", args.weak_target),
                        ("engine", args.engine_weak_target or args.weak_target),
                    )
                },
            }
    if "overhead" in parts:
        ro = report["router_overhead"]
        print(
            f"router overhead (c=1, weak answers): p50 {ro['p50']:.1f} ms, p99 {ro['p99']:.1f} ms  [proxy "
            f"{ro['proxy_p50']:.1f}, router code {ro['router_code_p50']:.2f}, handle hop {ro['handle_hop_p50']:.1f}]"
        )
        cv = report["cascade_vs_ideal"]
        print(
            f"cascade (c=32): {cv['cascade_rps']:.1f} rps, d={cv['deferral_share']:.3f}, ideal {cv['ideal_rps']:.1f} "
            f"rps -> ratio {cv['ratio']:.2f}"
        )
    if "autoscaling" in parts:
        print(f"autoscaling, steps {args.steps} (qps:s), weak target {args.weak_target}:")
        print(f"{'policy':<14} {'deployment':<12} {'peak':>5} {'s to peak':>10} {'s back to 1':>12}  errors")
        for policy, r in report["autoscaling"]["runs"].items():
            for dep, v in r["per_deployment"].items():
                print(
                    f"{policy:<14} {dep:<12} {v['peak_replicas']:>5} {v['s_to_peak_after_step_up'] or '-':>10} "
                    f"{v['s_back_to_1_after_step_down'] or '-':>12}  {r['errors'] or 0}"
                )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    if args.plot and "autoscaling" in parts:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t_heavy = steps[0][1]
        runs = report["autoscaling"]["runs"]
        fig, axes = plt.subplots(1, len(runs), figsize=(12, 4), sharey=True)
        for ax, (policy, r) in zip(axes, runs.items()):
            for dep in ("tier-weak", "tier-strong", "Router"):
                ax.step(
                    [s_["t"] for s_ in r["samples"]], [s_.get(dep, 0) for s_ in r["samples"]], where="post", label=dep
                )
            for x in (t_heavy, t_heavy + steps[1][1]):
                ax.axvline(x, c="grey", ls="--", lw=0.8)
            ax.set_xlabel(f"seconds (steps {args.steps} qps:s)")
            ax.set_title(
                f"{policy}: weak at peak {r['per_deployment']['tier-weak']['s_to_peak_after_step_up']} s after the step"
            )
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("running replicas")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    main()
